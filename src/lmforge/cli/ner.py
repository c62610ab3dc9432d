"""The ner task of `lmforge evaluate` and `lmforge predict` (those verbs' modules dispatch here)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from lmforge.cli.common import print_json
from lmforge.errors import DataError


def run_evaluate_ner(args) -> int:
    from lmforge.eval.ner import format_ner_metrics
    from lmforge.tasks.ner.pipeline import evaluate_ner

    scores = evaluate_ner(
        args.ckpt, args.data, report=args.report, device=args.device, overwrite=args.overwrite
    )
    if args.json:
        print_json(scores)
    else:
        print(format_ner_metrics(scores))
        if args.report:
            print(f"report: {args.report}/report.md")
    return 0


def run_predict_ner(args) -> int:
    from lmforge.tasks.ner.pipeline import TokenClassificationPipeline

    ner = TokenClassificationPipeline(args.ckpt, device=args.device)
    if args.input == "-":
        lines = sys.stdin.read().splitlines()
    else:
        try:
            lines = Path(args.input).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"cannot read {args.input} as UTF-8 text ({type(exc).__name__})") from None
    texts = [ln for ln in lines if ln.strip()]  # unstripped: the offsets point into each line as it is
    if not texts:
        raise DataError(f"{args.input} has no text to tag")
    for text, entities in zip(texts, ner(texts)):
        if args.json:
            print(json.dumps({"text": text, "entities": entities}, ensure_ascii=False))
        else:
            shown = ", ".join(
                f"{e['type']} {e['text']!r} [{e['start']}:{e['end']}] {e['score']:.3f}" for e in entities
            )
            print(f"{shown or '-'}\t{text}")
    return 0
