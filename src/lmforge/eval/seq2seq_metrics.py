"""Scores of generated text against references: corpus BLEU and chrF (sacrebleu) for translation, ROUGE-1/2/L
F-measures (rouge-score) for summarization; a JSON + Markdown report with sample outputs beside their references.

All scores are on a 0-100 scale. Chinese has no spaces between words, so Chinese references are scored with
sacrebleu's "zh" tokenizer (characters) and ROUGE over characters.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from lmforge.extras import require

TASK_METRICS = {"translate": ("bleu", "chrf"), "summarize": ("rouge1", "rouge2", "rougeL")}


def looks_chinese(texts: list[str]) -> bool:
    """Mostly CJK characters (Chinese has no spaces between words: references are scored by characters)."""
    sample = "".join(texts[:500]).replace(" ", "")
    return sum("\u4e00" <= ch <= "\u9fff" for ch in sample) > 0.3 * max(1, len(sample))


def bleu(hypotheses: list[str], references: list[str], chinese: bool | None = None) -> float:
    sacrebleu = require("sacrebleu", extra="tasks", feature="BLEU scores")

    chinese = looks_chinese(references) if chinese is None else chinese
    return sacrebleu.corpus_bleu(hypotheses, [references], tokenize="zh" if chinese else "13a").score


def chrf(hypotheses: list[str], references: list[str]) -> float:
    sacrebleu = require("sacrebleu", extra="tasks", feature="chrF scores")

    return sacrebleu.corpus_chrf(hypotheses, [references]).score


class _CharTokenizer:
    """rouge-score's own tokenizer keeps only [a-z0-9], which deletes Chinese text entirely."""

    @staticmethod
    def tokenize(text: str) -> list[str]:
        return [ch for ch in text if not ch.isspace()]


def rouge(hypotheses: list[str], references: list[str], chinese: bool | None = None) -> dict[str, float]:
    """Mean ROUGE-1, ROUGE-2 and ROUGE-L F-measures over the pairs."""
    rouge_scorer = require("rouge_score.rouge_scorer", extra="tasks", feature="ROUGE scores")

    chinese = looks_chinese(references) if chinese is None else chinese
    keys = ["rouge1", "rouge2", "rougeL"]
    scorer = rouge_scorer.RougeScorer(keys, tokenizer=_CharTokenizer() if chinese else None)
    totals = dict.fromkeys(keys, 0.0)
    for hyp, ref in zip(hypotheses, references, strict=True):
        for key, s in scorer.score(ref, hyp).items():
            totals[key] += s.fmeasure
    return {k: 100 * v / max(1, len(references)) for k, v in totals.items()}


def score_outputs(task: str, hypotheses: list[str], references: list[str]) -> dict[str, float]:
    if task == "translate":
        return {"bleu": bleu(hypotheses, references), "chrf": chrf(hypotheses, references)}
    return rouge(hypotheses, references)


def write_report(
    folder: str | os.PathLike,
    task: str,
    scores: dict,
    sources: list[str],
    hypotheses: list[str],
    references: list[str],
    samples: int = 20,
) -> Path:
    """metrics.json, outputs.jsonl (every output) and report.md (scores and the first `samples` outputs)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps(scores, indent=2), encoding="utf-8")
    with open(folder / "outputs.jsonl", "w", encoding="utf-8") as f:
        for s, h, r in zip(sources, hypotheses, references):
            f.write(json.dumps({"source": s, "output": h, "reference": r}, ensure_ascii=False) + "\n")

    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    names = {
        "bleu": "BLEU",
        "chrf": "chrF",
        "rouge1": "ROUGE-1 F",
        "rouge2": "ROUGE-2 F",
        "rougeL": "ROUGE-L F",
    }
    lines = [
        f"# {task} evaluation",
        "",
        f"{scores['pairs']:,} pairs"
        + (f", beam {scores['num_beams']}" if scores.get("num_beams", 1) > 1 else ", greedy decoding"),
        "",
        "| metric | score |",
        "|---|---|",
    ]
    lines += [f"| {names[k]} | {scores[k]:.2f} |" for k in TASK_METRICS[task]]
    lines += [
        "",
        f"## Sample outputs (first {min(samples, len(sources))})",
        "",
        "| source | output | reference |",
        "|---|---|---|",
    ]
    lines += [
        f"| {cell(s)} | {cell(h)} | {cell(r)} |"
        for s, h, r in list(zip(sources, hypotheses, references))[:samples]
    ]
    (folder / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder / "report.md"
