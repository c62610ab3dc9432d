"""Scores of generated text against references: corpus BLEU and chrF (sacrebleu) for translation, ROUGE-1/2/L
F-measures (rouge-score) for summarization; decoding a list of sources with a seq2seq model; a JSON + Markdown
report with sample outputs beside their references.

All scores are on a 0-100 scale. Chinese has no spaces between words, so Chinese references are scored with
sacrebleu's "zh" tokenizer (characters) and ROUGE over characters.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

TASK_METRICS = {"translate": ("bleu", "chrf"), "summarize": ("rouge1", "rouge2", "rougeL")}


def looks_chinese(texts: list[str]) -> bool:
    sample = "".join(texts[:500]).replace(" ", "")
    return sum("\u4e00" <= ch <= "\u9fff" for ch in sample) > 0.3 * max(1, len(sample))


def bleu(hypotheses: list[str], references: list[str], chinese: bool | None = None) -> float:
    import sacrebleu

    chinese = looks_chinese(references) if chinese is None else chinese
    return sacrebleu.corpus_bleu(hypotheses, [references], tokenize="zh" if chinese else "13a").score


def chrf(hypotheses: list[str], references: list[str]) -> float:
    import sacrebleu

    return sacrebleu.corpus_chrf(hypotheses, [references]).score


class _CharTokenizer:
    """rouge-score's own tokenizer keeps only [a-z0-9], which deletes Chinese text entirely."""

    @staticmethod
    def tokenize(text: str) -> list[str]:
        return [ch for ch in text if not ch.isspace()]


def rouge(hypotheses: list[str], references: list[str], chinese: bool | None = None) -> dict[str, float]:
    """Mean ROUGE-1, ROUGE-2 and ROUGE-L F-measures over the pairs."""
    from rouge_score import rouge_scorer

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


@torch.no_grad()
def decode_texts(model, tokenizer, sources: list[str], num_beams: int = 1, batch_size: int = 32,
                 max_new_tokens: int | None = None, length_penalty: float = 1.0) -> list[str]:
    """The model's output text for each source (special tokens dropped); sources longer than the model's block
    are cut, batches hold sources of similar length so there is little padding."""
    from lmforge.generate.beam import BeamParams, beam_search
    from lmforge.generate.sampling import SamplingParams
    from lmforge.models.seq2seq import decode_tokens, decoder_start_id

    was_training = model.training
    block = model.config.block_size
    limit = block - 1 if max_new_tokens is None else min(max_new_tokens, block - 1)
    device = next(model.parameters()).device
    start, eos, pad = decoder_start_id(tokenizer), tokenizer.eos_id, tokenizer.pad_id or 0
    ids = [(tokenizer.encode(s) or [tokenizer.unk_id or 0])[:block] for s in sources]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out: list[list[int]] = [[] for _ in ids]
    for first in range(0, len(order), batch_size):
        chunk = order[first : first + batch_size]
        src = torch.full((len(chunk), max(len(ids[i]) for i in chunk)), pad, dtype=torch.long)
        mask = torch.zeros(src.shape, dtype=torch.bool)
        for row, i in enumerate(chunk):
            src[row, : len(ids[i])], mask[row, : len(ids[i])] = torch.tensor(ids[i]), True
        src, mask = src.to(device), mask.to(device)
        if num_beams > 1:
            beams = beam_search(model, src, mask, start, eos, BeamParams(num_beams, limit, length_penalty))
            for row, i in enumerate(chunk):
                out[i] = beams[row][0].tokens
            continue
        done = [False] * len(chunk)
        for tokens in decode_tokens(model, src, mask, start, SamplingParams(limit, temperature=0.0)):
            for row, t in enumerate(tokens.tolist()):
                if not done[row]:
                    done[row] = t == eos
                    out[chunk[row]] += [] if done[row] else [t]
            if all(done):
                break
    model.train(was_training)
    return [tokenizer.decode(o) for o in out]


def write_report(folder: str | os.PathLike, task: str, scores: dict, sources: list[str], hypotheses: list[str],
                 references: list[str], samples: int = 20) -> Path:
    """metrics.json, outputs.jsonl (every output) and report.md (scores and the first `samples` outputs)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps(scores, indent=2), encoding="utf-8")
    with open(folder / "outputs.jsonl", "w", encoding="utf-8") as f:
        for s, h, r in zip(sources, hypotheses, references):
            f.write(json.dumps({"source": s, "output": h, "reference": r}, ensure_ascii=False) + "\n")

    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    names = {"bleu": "BLEU", "chrf": "chrF", "rouge1": "ROUGE-1 F", "rouge2": "ROUGE-2 F", "rougeL": "ROUGE-L F"}
    lines = [f"# {task} evaluation", "", f"{scores['pairs']:,} pairs"
             + (f", beam {scores['num_beams']}" if scores.get("num_beams", 1) > 1 else ", greedy decoding"), "",
             "| metric | score |", "|---|---|"]
    lines += [f"| {names[k]} | {scores[k]:.2f} |" for k in TASK_METRICS[task]]
    lines += ["", f"## Sample outputs (first {min(samples, len(sources))})", "", "| source | output | reference |",
              "|---|---|---|"]
    lines += [f"| {cell(s)} | {cell(h)} | {cell(r)} |" for s, h, r in list(zip(sources, hypotheses, references))[:samples]]
    (folder / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder / "report.md"


def evaluate_seq2seq(model: str | os.PathLike, data: str | os.PathLike, task: str, num_beams: int = 1,
                     source_field: str = "src", target_field: str = "tgt", report: str | os.PathLike | None = None,
                     batch_size: int = 32, device: str = "auto", source_lang: str | None = None,
                     target_lang: str | None = None) -> dict:
    """BLEU and chrF (translate) or ROUGE (summarize) of a seq2seq checkpoint's outputs on a pairs file (or of a gpt
    fine-tuned on prompted pairs: tasks/pair_prompts.py)."""
    from lmforge.errors import ConfigError
    from lmforge.lm import load
    from lmforge.tasks.pair_prompts import check_transducer, decode_sources
    from lmforge.tasks.pairs import read_pairs

    if task not in TASK_METRICS:
        raise ConfigError(f"task must be one of {', '.join(TASK_METRICS)}, got {task!r}")
    if num_beams < 1:
        raise ConfigError(f"--num-beams must be >= 1, got {num_beams}")
    lm = load(model, device=device)
    check_transducer(lm, f"--task {task}")
    pairs = read_pairs(data, source_field, target_field, source_lang=source_lang, target_lang=target_lang)
    sources, references = [p.source for p in pairs], [p.target for p in pairs]
    outputs = decode_sources(lm, sources, num_beams, batch_size)
    scores = {**score_outputs(task, outputs, references), "pairs": len(pairs), "num_beams": num_beams}
    if report:
        write_report(report, task, scores, sources, outputs, references)
    return scores
