"""Entity-level scores of a tagger (seqeval, strict mode) and their report: JSON, Markdown and a confusion plot.

Strict mode counts an entity as found only when its type and both of its boundaries are right, and reads tags by
the scheme (IOB2 or IOBES) instead of guessing: the CoNLL-2003 convention.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from lmforge.eval.classification import plot_confusion
from lmforge.extras import require


def entity_metrics(gold: list[list[str]], pred: list[list[str]], scheme: str = "IOB2") -> dict:
    """Micro-averaged entity precision/recall/F1, the same per entity type, word accuracy and a word-level
    confusion matrix of entity types (O included)."""
    sm = require("seqeval.metrics", extra="tasks", feature="entity-level NER scores")
    from seqeval import scheme as schemes

    kw = {"mode": "strict", "scheme": getattr(schemes, scheme), "zero_division": 0}
    report = sm.classification_report(gold, pred, output_dict=True, **kw)
    types = sorted(k for k in report if not k.endswith(" avg"))
    out = {
        "f1": float(sm.f1_score(gold, pred, **kw)),
        "precision": float(sm.precision_score(gold, pred, **kw)),
        "recall": float(sm.recall_score(gold, pred, **kw)),
        "accuracy": float(sm.accuracy_score(gold, pred)),  # per word, O included
        "per_type": {
            t: {
                "precision": float(report[t]["precision"]),
                "recall": float(report[t]["recall"]),
                "f1": float(report[t]["f1-score"]),
                "support": int(report[t]["support"]),
            }
            for t in types
        },
        "entities": int(sum(report[t]["support"] for t in types)),
        "sentences": len(gold),
    }
    names = ["O"] + sorted({tag[2:] for seq in gold + pred for tag in seq if tag != "O"})
    index = {n: i for i, n in enumerate(names)}
    matrix = [[0] * len(names) for _ in names]
    for g_seq, p_seq in zip(gold, pred):
        for g, p in zip(g_seq, p_seq):
            matrix[index[g[2:] or "O"]][index[p[2:] or "O"]] += 1
    out["confusion_labels"], out["confusion_matrix"] = names, matrix
    return out


def format_ner_metrics(m: dict) -> str:
    lines = [
        f"entity F1 {m['f1']:.4f}  precision {m['precision']:.4f}  recall {m['recall']:.4f}  "
        f"word accuracy {m['accuracy']:.4f}  ({m['entities']:,} entities, {m['sentences']:,} sentences)"
    ]
    width = max(8, *(len(n) for n in m["per_type"])) if m["per_type"] else 8
    lines.append(f"{'type':<{width}}  precision  recall     f1  support")
    for name, s in m["per_type"].items():
        lines.append(
            f"{name:<{width}}  {s['precision']:9.4f}  {s['recall']:6.4f}  {s['f1']:.4f}  {s['support']:7d}"
        )
    return "\n".join(lines)


def write_ner_report(m: dict, folder: str | os.PathLike, samples: list[dict] | None = None) -> Path:
    """metrics.json, report.md and confusion_matrix.png (entity types per word) in `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps(m, indent=2, ensure_ascii=False), encoding="utf-8")
    plot_confusion(m["confusion_matrix"], m["confusion_labels"], folder / "confusion_matrix.png")
    md = [
        "# Named-entity recognition report",
        "",
        "Entity-level scores (seqeval, strict mode).",
        "",
        "```",
        format_ner_metrics(m),
        "```",
        "",
        "![entity types per word: rows true, columns predicted](confusion_matrix.png)",
        "",
    ]
    if samples:
        md += [
            "## Sample predictions",
            "",
            "| sentence | gold entities | predicted entities |",
            "|---|---|---|",
        ]
        for s in samples:
            cells = [s["text"][:120], _entities(s["gold"]), _entities(s["predicted"])]
            md.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    (folder / "report.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    return folder


def _entities(entities: list[dict]) -> str:
    return ", ".join(f"{e['type']}: {e['text']}" for e in entities) or "-"
