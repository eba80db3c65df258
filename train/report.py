"""The evaluation report written beside a trained bundle: Markdown plus PNG plots."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(matrix: np.ndarray, labels: list[str], path: Path,
                   title: str = "Species classifier: confusion matrix (held-out bursts)") -> Path:
    """Row-normalised confusion matrix (rows: truth) with counts in the cells."""
    plt = _pyplot()
    rows = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros_like(matrix, dtype=float), where=rows > 0)
    size = max(5, 0.45 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i, j in zip(*np.nonzero(matrix)):
        ax.text(j, i, int(matrix[i, j]), ha="center", va="center", fontsize=7,
                color="white" if share[i, j] > 0.5 else "black")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_roc(fpr: np.ndarray, tpr: np.ndarray, auc: float, path: Path) -> Path:
    """Empty-vs-animal ROC curve."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot(fpr, tpr, lw=2, label=f"AUC {auc:.3f}")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1)
    ax.set_xlabel("false positive rate (empty called animal)")
    ax.set_ylabel("true positive rate (animal found)")
    ax.set_title("Empty vs animal")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_reid(results: dict[str, dict[str, dict[str, float]]], path: Path) -> Path:
    """Grouped bars: rank-1 / rank-5 / mAP per dataset, ImageNet baseline vs trained."""
    plt = _pyplot()
    metrics = ["rank1", "rank5", "mAP"]
    datasets = list(results)
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.2 * len(datasets), 3.6), squeeze=False)
    for ax, name in zip(axes[0], datasets):
        x = np.arange(len(metrics))
        for offset, (model, colour) in zip((-0.2, 0.2), (("baseline", "#999999"), ("trained", "#1f77b4"))):
            values = [results[name].get(model, {}).get(m, 0.0) for m in metrics]
            ax.bar(x + offset, values, 0.4, label=model, color=colour)
        ax.set_xticks(x, metrics)
        ax.set_ylim(0, 1)
        ax.set_title(name)
    axes[0][0].legend()
    fig.suptitle("Re-identification on held-out individuals")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _per_class_table(report: dict) -> list[str]:
    lines = ["| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    for label, row in report["per_class"].items():
        lines.append(f"| {label} | {row['precision']:.3f} | {row['recall']:.3f} | {row['f1']:.3f} | {row['support']} |")
    return lines


def _detector_section(detector: dict) -> list[str]:
    lines = ["## Detector", "",
             f"Fine-tuned on {detector.get('train_images')} images, evaluated on {detector.get('val_images')} held-out "
             f"images; classes {', '.join(detector.get('classes', []))}. Shipped: **{detector.get('kept')}** "
             "(the fine-tuned detector ships only when its val mAP50 and recall are at least the pretrained "
             f"one's and it still finds >= 90 % of the pretrained detector's own boxes: "
             f"{detector.get('pretrained_boxes_kept', float('nan')):.2f}).", "",
             "| model | mAP50 | AP50 per class | recall @0.25 | boxes |", "|---|---|---|---|---|"]
    for model in ("pretrained", "fine-tuned"):
        m = detector.get(model, {})
        per_class = ", ".join(f"{k} {v:.3f}" for k, v in m.get("ap50", {}).items())
        lines.append(f"| {model} | {m.get('map50', float('nan')):.3f} | {per_class} | {m.get('recall', float('nan')):.3f} | "
                     f"{m.get('boxes', '')} |")
    return [*lines, ""]


def write_report(out: Path, *, classifier: dict | None = None, roc: dict | None = None,
                 reid: dict | None = None, detector: dict | None = None, notes: list[str] | None = None) -> Path:
    """Write ``report.md`` and its PNGs into ``out``; sections appear for what was measured."""
    out.mkdir(parents=True, exist_ok=True)
    lines = ["# trapedge training report", "",
             "What the camera does (the INT8 bundle through the edge pipeline, each source's held-out images) "
             "is put at the top of this report by `trapedge export --trained`; the sections below are the "
             "training's own checks of each model on its own, not what the camera does.", ""]
    if classifier:
        plot_confusion(np.asarray(classifier["confusion"]), classifier["labels"], out / "confusion.png")
        lines += ["## Species classifier alone (whole frames; a training check, not the camera)", "",
                  f"Held-out test split: top-1 **{classifier['top1']:.3f}**, macro-F1 **{classifier['macro_f1']:.3f}** "
                  f"({classifier['n']} images).", "", *_per_class_table(classifier), "", "![confusion](confusion.png)", ""]
    if roc:
        plot_roc(np.asarray(roc["fpr"]), np.asarray(roc["tpr"]), roc["auc"], out / "roc_empty.png")
        lines += ["## Empty vs animal", "", f"AUC {roc['auc']:.3f}", "", "![roc](roc_empty.png)", ""]
    if reid:
        plot_reid(reid, out / "reid.png")
        lines += ["## Re-identification", "", "| data | model | rank-1 | rank-5 | mAP | queries |",
                  "|---|---|---|---|---|---|"]
        for name, models in reid.items():
            for model, m in models.items():
                scores = f"{m['rank1']:.3f} | {m['rank5']:.3f} | {m['mAP']:.3f}"
                lines.append(f"| {name} | {model} | {scores} | {m.get('queries', '')} |")
        lines += ["", "![reid](reid.png)", ""]
    if detector:
        lines += _detector_section(detector)
    if notes:
        lines += ["## Notes", "", *(f"- {n}" for n in notes), ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
