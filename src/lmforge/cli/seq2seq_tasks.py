"""The translate and summarize tasks of `lmforge finetune` and `lmforge evaluate` (those verbs dispatch here)."""

from __future__ import annotations

from lmforge.cli.common import print_json

SEQ2SEQ_TASKS = ("translate", "summarize")


def add_pair_options(p) -> None:
    p.add_argument(
        "--source-field",
        default="src",
        help="translate/summarize: JSONL field (or TSV column number) of the source text",
    )
    p.add_argument(
        "--target-field",
        default="tgt",
        help="translate/summarize: JSONL field (or TSV column number) of the target text",
    )
    p.add_argument(
        "--source-lang",
        help="translate/summarize: read parallel files PATH.SOURCE_LANG and "
        "PATH.TARGET_LANG (e.g. --train data/train --source-lang de --target-lang en)",
    )
    p.add_argument("--target-lang", help="translate/summarize: the target language suffix of parallel files")


def add_beam_option(p) -> None:
    p.add_argument(
        "--num-beams", type=int, default=1, help="translate/summarize: beam size (1: greedy decoding)"
    )


def run_evaluate_seq2seq(args) -> int:
    from lmforge.tasks.translate.pipeline import evaluate_seq2seq

    scores = evaluate_seq2seq(
        args.ckpt,
        args.data,
        args.task,
        num_beams=args.num_beams,
        source_field=args.source_field,
        target_field=args.target_field,
        report=args.report,
        source_lang=args.source_lang,
        target_lang=args.target_lang,
        batch_size=args.batch_size,
        device=args.device,
        overwrite=args.overwrite,
    )
    if args.json:
        print_json(scores)
    elif args.task == "translate":
        print(f"BLEU {scores['bleu']:.2f}  chrF {scores['chrf']:.2f}  ({scores['pairs']:,} pairs)")
    else:
        print(
            f"ROUGE-1 {scores['rouge1']:.2f}  ROUGE-2 {scores['rouge2']:.2f}  ROUGE-L {scores['rougeL']:.2f}  "
            f"({scores['pairs']:,} pairs)"
        )
    if args.report and not args.json:
        print(f"report: {args.report}/report.md")
    return 0


def _sources(source: str, field: str) -> list[str]:
    """One source per non-empty line of a text file (or stdin), or the `field` of each line of a .jsonl file."""
    import json
    import sys
    from pathlib import Path

    from lmforge.errors import DataError

    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {source} as UTF-8 text ({type(exc).__name__})") from None
    jsonl = source != "-" and Path(source).suffix.lower() == ".jsonl"
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if jsonl:
            try:
                item = json.loads(line)
            except json.JSONDecodeError:
                item = None
            value = item.get(field) if isinstance(item, dict) else None
            if not isinstance(value, str) or not value.strip():
                raise DataError(f"{source}:{n} has no text in field {field!r}")
            line = value
        out.append(line.strip())
    if not out:
        raise DataError(f"{source} has no source text")
    return out


def run_predict_seq2seq(args) -> int:
    import json

    from lmforge.errors import ConfigError
    from lmforge.lm import load
    from lmforge.tasks.translate.pipeline import check_transducer, decode_sources

    if args.num_beams < 1:
        raise ConfigError(f"--num-beams must be >= 1, got {args.num_beams}")
    lm = load(args.ckpt, device=args.device)
    check_transducer(lm, f"--task {args.task}")
    # The source side of parallel files: --input data/val --source-lang de reads data/val.de.
    if args.source_lang and args.input == "-":
        raise ConfigError("--source-lang names the suffix of a parallel file; it does not apply to --input -")
    source = f"{args.input}.{args.source_lang}" if args.source_lang else args.input
    sources = _sources(source, args.source_field)
    for source, output in zip(sources, decode_sources(lm, sources, args.num_beams)):
        print(json.dumps({"source": source, "output": output}, ensure_ascii=False) if args.json else output)
    return 0
