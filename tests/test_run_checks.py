"""`trapedge run --validate-config` checks what the run needs, each problem one line saying what to do."""

import yaml

from trapedge.cli import main


def _config(tmp_path, bundle_dir, **overrides):
    (tmp_path / "in").mkdir(exist_ok=True)
    config = {"device_id": "cam", "sources": [{"type": "folder", "id": "sd", "path": str(tmp_path / "in")}],
              "bundle": {"path": str(bundle_dir)}, "store": {"path": str(tmp_path / "state" / "db.sqlite")},
              "rules": {"watch": [{"label": "bear", "threshold": 0.5}]}, **overrides}
    path = tmp_path / "edge.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_a_ready_config_is_ok(tmp_path, bundle_dir, capsys):
    assert main(["run", "--config", str(_config(tmp_path, bundle_dir)), "--validate-config"]) == 0
    assert capsys.readouterr().out.startswith("config OK")


def test_a_watch_label_the_bundle_cannot_give_is_refused(tmp_path, bundle_dir, capsys):
    rules = {"watch": [{"label": "kiwi", "threshold": 0.5}, {"label": "bear", "threshold": 0.5}]}
    assert main(["run", "--config", str(_config(tmp_path, bundle_dir, rules=rules)), "--validate-config"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("rules: 'kiwi' is not a label of bundle") and "can never alert" in line and "bear" in line


def test_an_embed_label_the_bundle_cannot_give_is_refused(tmp_path, bundle_dir, capsys):
    """A typo in detection.embed_labels would embed nothing, silently: one line names it and the labels."""
    detection = {"embed_labels": ["leopad", "bear"]}
    assert main(["run", "--config", str(_config(tmp_path, bundle_dir, detection=detection)), "--validate-config"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("detection.embed_labels: 'leopad' is not a label of bundle")
    assert "no box is ever embedded for it" in line and "bear" in line
    ok = _config(tmp_path, bundle_dir, detection={"embed_labels": ["bear"]})
    assert main(["run", "--config", str(ok), "--validate-config"]) == 0
    capsys.readouterr()
    private = _config(tmp_path, bundle_dir, detection={"embed_labels": ["bear", "person"]})
    assert main(["run", "--config", str(private), "--validate-config"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("detection.embed_labels: 'person' is never embedded") and line.endswith("remove it")


def test_a_missing_bundle_and_folder_are_one_line_each(tmp_path, bundle_dir, capsys):
    path = _config(tmp_path, tmp_path / "no-bundle",
                   sources=[{"type": "folder", "id": "sd", "path": str(tmp_path / "card")}])
    assert main(["run", "--config", str(path), "--validate-config"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(":")[0] for line in lines] == ["bundle.path", "sources"]
    assert "Traceback" not in "".join(lines)
