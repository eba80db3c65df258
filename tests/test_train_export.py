"""`trapedge train --quick` then `trapedge export --trained`: a gated bundle the edge runs unchanged."""

import json

from edge.runtime.bundle import load_bundle
from trapedge.cli import main


def test_quick_train_then_export_then_detect_and_embed(tmp_path, data, capsys):
    run = tmp_path / "run"
    assert main(["train", "--quick", "--data", str(data), "--out", str(run)]) == 0
    figures = json.loads((run / "figures.json").read_text())
    assert figures["species"]["n"] > 100 and 0 < figures["species"]["top1"] <= 1
    assert set(figures["reid"]) == {"lion val (held-out individuals)", "leopards (never trained on)"}
    report = (run / "report" / "report.md").read_text()
    assert "## Species classifier" in report and "## Re-identification" in report and "## Detector" in report
    detector = figures["detector"]
    assert detector["kept"] in ("fine-tuned", "pretrained") and detector["val_images"] >= 1
    assert 0 <= detector["pretrained"]["map50"] <= 1 and 0 <= detector["pretrained_boxes_kept"] <= 1
    assert (run / "report" / "confusion.png").stat().st_size > 5000
    assert (run / "splits" / "species.csv").is_file() and (run / "dataset_summary.csv").is_file()

    bundle = tmp_path / "bundles" / "trained"
    assert main(["export", "--data", str(data), "--trained", str(run), "--out", str(bundle)]) == 0
    manifest = load_bundle(bundle).manifest
    labels = manifest.models["classifier"].labels
    assert "Empty" in labels and "Cattle" in labels and all(g["passed"] for g in manifest.gates.values())
    assert manifest.models["detector"].labels == ["animal"]  # people and vehicles: boxed by it, named by the classifier
    # the held-out images of every source went through the bundle's own pipeline into the model card
    assert set(manifest.evaluation) == {"species:mlwic_ca01", "boxes:missouri_camtraps", "boxes:mlwic_ca01"}
    missouri = manifest.evaluation["boxes:missouri_camtraps"]
    assert missouri["boxes"]["recall"]["animal"]["all"]["boxes"] > 100
    report = (run / "report" / "report.md").read_text()  # the training report now leads with the camera
    assert report.index("## What the camera does on held-out images") < report.index("## Species classifier alone")
    card = (bundle / "MODEL_CARD.md").read_text()
    assert "| boxes:missouri_camtraps |" in card and "INT8 gates" in card
    assert manifest.models["classifier"].taxonomy["Bobcat"] == ["felidae", "carnivora", "mammalia"]
    assert any(name.startswith("detector.int8_recall_of_fp32.animal.") for name in manifest.gates)
    # the embedder learnt these individuals: its compact projection is a plain PCA (whitening overfits it)
    assert manifest.compact is not None and manifest.compact.whitened is False

    # files gone from a dataset after training: refused in one line before the build, not a traceback after it
    boxes_split = run / "splits" / "boxes.csv"
    boxes_split.write_text(boxes_split.read_text() + "boxes/missouri_camtraps/images/Agouti/GONE.JPG,test,SEQ1,Agouti\n")
    capsys.readouterr()
    assert main(["export", "--data", str(data), "--trained", str(run), "--out", str(tmp_path / "stale")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("export refused: ") and "1 of its files are gone" in err[-1] and not any("Traceback" in line for line in err)
    assert not (tmp_path / "stale").exists()

    out = tmp_path / "md.json"
    assert main(["detect", str(data / "frames" / "ena24_small"), "--bundle", str(bundle), "--output", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert list(doc["classification_categories"].values()) == labels
    assert all({"prediction", "prediction_score", "prediction_source"} <= set(im) for im in doc["images"])
    emb = tmp_path / "emb.jsonl"
    assert main(["embed", str(data / "reid" / "leopard_spotid" / "crops"), "--bundle", str(bundle),
                 "--crop", "whole", "--output", str(emb)]) == 0
    lines = [json.loads(line) for line in emb.read_text().splitlines()]
    assert len(lines) == 44 and len(lines[0]["embedding"]) == manifest.models["embedder"].embedding_dim
