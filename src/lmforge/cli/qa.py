"""The qa task of `lmforge evaluate` and `lmforge predict` (those verbs' modules dispatch here)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from lmforge.cli.common import print_json
from lmforge.errors import DataError


def run_evaluate_qa(args) -> int:
    from lmforge.outputs import check_output, staged
    from lmforge.tasks.qa.pipeline import evaluate_qa

    if args.report:
        check_output(args.report, overwrite=args.overwrite, inputs=[args.ckpt, args.data], flag="--report")
    scores = evaluate_qa(args.ckpt, args.data, device=args.device)
    if args.report:
        with staged(args.report) as folder:
            (folder / "metrics.json").write_text(json.dumps(scores, indent=2), encoding="utf-8")
    if args.json:
        print_json(scores)
    else:
        print(
            f"exact match {scores['exact_match']:.2f}  F1 {scores['f1']:.2f}  ({scores['examples']:,} questions)"
        )
    return 0


def _questions(source: str) -> list[dict]:
    """{"question", "context"} items from a JSON Lines file (or stdin), or every question of a SQuAD file."""
    if source != "-" and Path(source).suffix.lower() == ".json":
        from lmforge.tasks.qa.squad import read_squad

        return [{"id": ex.id, "question": ex.question, "context": ex.context} for ex in read_squad(source)]
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {source} as UTF-8 text ({type(exc).__name__})") from None
    items = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                item = json.loads(line)
            except json.JSONDecodeError:
                raise DataError(f"{source}:{n} is not a JSON object with 'question' and 'context'") from None
            if not isinstance(item, dict):
                raise DataError(f"{source}:{n} is not a JSON object with 'question' and 'context'")
            items.append(item)
    if not items:
        raise DataError(f"{source} has no questions")
    return items


def run_predict_qa(args) -> int:
    from lmforge.tasks.qa.pipeline import QuestionAnsweringPipeline

    qa = QuestionAnsweringPipeline(args.ckpt, device=args.device)
    items = _questions(args.input)
    for item, answer in zip(items, qa(items)):
        if args.json:
            print(
                json.dumps(
                    {**({"id": item["id"]} if "id" in item else {}), "question": item["question"], **answer},
                    ensure_ascii=False,
                )
            )
        else:
            print(f"{answer['answer']}\t{answer['score']:.3f}\t{item['question']}")
    return 0
