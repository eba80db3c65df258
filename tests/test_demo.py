"""`make demo` on a small folder of real frames: the watch-list, file names, aligned columns, why each alert fired."""

import shutil

import pytest

from edge.cli.demo import DEMO_WATCH, aligned, main

FOX_BURST = ["4330.jpg", "4383.jpg", "4451.jpg"]  # one Grey Fox burst in ENA24 (labels.csv groups it)


@pytest.fixture
def frames(data, tmp_path):
    folder = tmp_path / "frames" / "ena24"
    folder.mkdir(parents=True)
    source = data / "frames" / "ena24_small"
    for name in FOX_BURST:
        shutil.copy(source / name, folder / name)
    (folder / "labels.csv").write_text("filepath,label\n" + "".join(f"{n},Grey Fox\n" for n in FOX_BURST))
    shutil.copy(data / "frames" / "animl_samples" / "sample-img-empty.jpg", folder.parent / "empty.jpg")
    return folder.parent


def test_demo_prints_watch_list_files_aligned_columns_and_why(frames, bundle_dir, tmp_path, capsys):
    assert main(["--frames", str(frames), "--bundle", str(bundle_dir), "--workdir", str(tmp_path / "work")]) == 0
    out = capsys.readouterr().out.splitlines()
    for rule in DEMO_WATCH:
        assert any(line.split()[:3] == [rule["label"], "threshold", f"{rule['threshold']:.2f}"] for line in out), rule
    start = next(i for i, line in enumerate(out) if line.startswith("file "))
    header, rows = out[start], out[start + 1: start + 5]
    names = [row.split()[0] for row in rows]
    assert sorted(names) == sorted(["frames__empty.jpg"] + [f"ena24__{n}" for n in FOX_BURST])
    columns = {name: header.index(name) for name in ("event", "taken", "label", "alert", "why")}
    event_rows = [row for row in rows if row[columns["event"]] != " "]
    assert event_rows, "the fox burst must make an event"
    for row in event_rows:  # every event row's cells start under their headings
        for name, at in columns.items():
            assert row[at] != " " and row[at - 1] == " ", (name, row)
    assert "nothing detected" in rows[names.index("frames__empty.jpg")]
    for row in event_rows:
        score = float(row[columns["label"]:columns["alert"]].split()[1])
        why = row[columns["why"]:]
        if row[columns["alert"]:columns["why"]].strip() == "ALERT":
            assert "threshold" in why  # why it fired, even when the whole burst ends below the threshold
            assert score >= 0.5 or "mid-burst" in why


@pytest.mark.parametrize("rows, expected", [
    ([["a", "1.5"], ["long", "12.25"]], ["a       1.5", "long  12.25"]),
    ([["x", ""], ["yy", "z"]], ["x", "yy  z"]),
    ([], []),
])
def test_aligned(rows, expected):
    assert aligned(rows, right={1}) == expected
