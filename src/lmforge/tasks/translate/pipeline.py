"""A translation or summarization checkpoint as a function of sources, and its scores on a pairs file: an
encoder-decoder (generate/transduce.py), or a gpt fine-tuned on prompted pairs (prompts.py)."""

from __future__ import annotations

import os

from lmforge.checkpoint import load_for_inference
from lmforge.errors import ConfigError
from lmforge.eval.seq2seq_metrics import TASK_METRICS, score_outputs, write_report
from lmforge.generate.transduce import decode_texts
from lmforge.outputs import check_output, staged
from lmforge.tasks.translate.pairs import read_pairs
from lmforge.tasks.translate.prompts import PairPrompt


def check_transducer(lm, what: str = "this task") -> PairPrompt | None:
    """The prompt format of a decoder-only model fine-tuned on pairs, None for an encoder-decoder; any other model
    is a ConfigError."""
    prompt = PairPrompt.from_config(lm.config)
    if prompt is None and getattr(lm.model.config, "objective", None) != "seq2seq":
        raise ConfigError(
            f"{lm.path or 'this model'} is neither an encoder-decoder (seq2seq) nor a gpt fine-tuned "
            f"with `lmforge finetune --task translate|summarize`; {what} needs one of those"
        )
    return prompt


def decode_sources(lm, sources: list[str], num_beams: int = 1, batch_size: int = 32) -> list[str]:
    """Output texts (special tokens dropped) of a translation/summarization checkpoint (an LM): an encoder-decoder,
    or a decoder-only model fine-tuned on prompted pairs."""
    prompt = check_transducer(lm)
    if prompt is not None:
        return prompt.decode_texts(lm.model, lm.tokenizer, sources, num_beams, batch_size)
    return decode_texts(lm.model, lm.tokenizer, sources, num_beams, batch_size)


def evaluate_seq2seq(
    model: str | os.PathLike,
    data: str | os.PathLike,
    task: str,
    num_beams: int = 1,
    source_field: str = "src",
    target_field: str = "tgt",
    report: str | os.PathLike | None = None,
    batch_size: int = 32,
    device: str = "auto",
    source_lang: str | None = None,
    target_lang: str | None = None,
    overwrite: bool = False,
) -> dict:
    """BLEU and chrF (translate) or ROUGE (summarize) of a seq2seq checkpoint's outputs on a pairs file (or of a gpt
    fine-tuned on prompted pairs: tasks/translate/prompts.py); with `report`, also metrics.json, outputs.jsonl and
    report.md in that folder (which appears whole at the end, and replaces an existing one only with
    overwrite=True: lmforge.outputs)."""
    if report:
        check_output(report, overwrite=overwrite, inputs=[model, data], flag="--report")
    if task not in TASK_METRICS:
        raise ConfigError(f"task must be one of {', '.join(TASK_METRICS)}, got {task!r}")
    if num_beams < 1:
        raise ConfigError(f"--num-beams must be >= 1, got {num_beams}")
    lm = load_for_inference(model, device=device)
    check_transducer(lm, f"--task {task}")
    pairs = read_pairs(data, source_field, target_field, source_lang=source_lang, target_lang=target_lang)
    sources, references = [p.source for p in pairs], [p.target for p in pairs]
    outputs = decode_sources(lm, sources, num_beams, batch_size)
    scores = {**score_outputs(task, outputs, references), "pairs": len(pairs), "num_beams": num_beams}
    if report:
        with staged(report) as tmp:
            write_report(tmp, task, scores, sources, outputs, references)
    return scores
