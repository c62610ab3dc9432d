"""Classification scores (scikit-learn) and their reports: JSON, Markdown, confusion-matrix and ROC plots."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from lmforge.extras import require


def classification_metrics(
    y_true: np.ndarray, probs: np.ndarray, labels: list[str], multi_label: bool = False
) -> dict:
    """Accuracy, macro/weighted precision, recall and F1, per-class scores, the confusion matrix, and ROC-AUC
    with the ROC curve for two classes.

    y_true: (N,) label indices, or (N, L) 0/1 indicators for multi-label; probs: (N, L) predicted probabilities.
    """
    skm = require("sklearn.metrics", extra="tasks", feature="classification scores")

    if multi_label:
        y_pred = (probs >= 0.5).astype(int)
        accuracy = float(skm.accuracy_score(y_true, y_pred))  # exact match of the whole label set
    else:
        y_pred = probs.argmax(1)
        accuracy = float(skm.accuracy_score(y_true, y_pred))
    ids = list(range(len(labels)))
    p, r, f, support = skm.precision_recall_fscore_support(y_true, y_pred, labels=ids, zero_division=0)
    out = {"accuracy": accuracy}
    for avg in ("macro", "weighted") + (("micro",) if multi_label else ()):
        ap, ar, af, _ = skm.precision_recall_fscore_support(
            y_true, y_pred, labels=ids, average=avg, zero_division=0
        )
        out.update({f"{avg}_precision": float(ap), f"{avg}_recall": float(ar), f"{avg}_f1": float(af)})
    out["per_class"] = {
        name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(support[i])}
        for i, name in enumerate(labels)
    }
    if not multi_label:
        out["confusion_matrix"] = skm.confusion_matrix(y_true, y_pred, labels=ids).tolist()
        if len(labels) == 2 and len(set(y_true.tolist())) == 2:
            out["roc_auc"] = float(skm.roc_auc_score(y_true, probs[:, 1]))
            fpr, tpr, _ = skm.roc_curve(y_true, probs[:, 1])
            out["roc_curve"] = {"fpr": fpr.tolist(), "tpr": tpr.tolist()}
    out["examples"] = int(len(y_true))
    return out


def format_metrics(m: dict, labels: list[str]) -> str:
    """The scores as a plain-text block: headline figures, per-class table, confusion matrix."""
    lines = [
        f"accuracy {m['accuracy']:.4f}  macro-F1 {m['macro_f1']:.4f}  weighted-F1 {m['weighted_f1']:.4f}"
        + (f"  ROC-AUC {m['roc_auc']:.4f}" if "roc_auc" in m else "")
        + f"  ({m['examples']:,} examples)"
    ]
    width = max(8, *(len(n) for n in labels))
    lines.append(f"{'label':<{width}}  precision  recall     f1  support")
    for name, s in m["per_class"].items():
        lines.append(
            f"{name:<{width}}  {s['precision']:9.4f}  {s['recall']:6.4f}  {s['f1']:.4f}  {s['support']:7d}"
        )
    if "confusion_matrix" in m:
        lines.append("confusion matrix (rows: true label, columns: predicted)")
        for name, row in zip(labels, m["confusion_matrix"]):
            lines.append(f"{name:<{width}}  " + " ".join(f"{v:6d}" for v in row))
    return "\n".join(lines)


def write_report(
    m: dict, labels: list[str], folder: str | os.PathLike, samples: list[dict] | None = None
) -> Path:
    """metrics.json, report.md, confusion_matrix.png and (two classes) roc.png in `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps(m, indent=2, ensure_ascii=False), encoding="utf-8")
    md = ["# Classification report", "", "```", format_metrics(m, labels), "```", ""]
    if "confusion_matrix" in m:
        plot_confusion(m["confusion_matrix"], labels, folder / "confusion_matrix.png")
        md += ["![confusion matrix](confusion_matrix.png)", ""]
    if "roc_curve" in m:
        _plot_roc(m["roc_curve"], m["roc_auc"], folder / "roc.png")
        md += ["![ROC curve](roc.png)", ""]
    if samples:
        md += ["## Sample predictions", "", "| text | label | predicted | score |", "|---|---|---|---|"]
        for s in samples:
            text = s["text"].replace("|", "\\|")[:120]
            md.append(f"| {text} | {s['label']} | {s['predicted']} | {s['score']:.3f} |")
    (folder / "report.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    return folder


def _pyplot():
    matplotlib = require("matplotlib", extra="tasks", feature="the report's plots")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(matrix: list[list[int]], labels: list[str], path: Path) -> None:
    plt = _pyplot()
    size = 2 + 0.6 * len(labels)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(np.array(matrix), cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    peak = max(max(row) for row in matrix) or 1
    for i, row in enumerate(matrix):
        for j, v in enumerate(row):
            ax.text(j, i, str(v), ha="center", va="center", color="white" if v > peak / 2 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_roc(curve: dict, auc: float, path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot(curve["fpr"], curve["tpr"], label=f"AUC {auc:.3f}")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
