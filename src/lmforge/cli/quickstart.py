"""`lmforge quickstart`: the whole lifecycle on a built-in corpus, in about five minutes, with no download."""

from __future__ import annotations

from lmforge.cli.common import add_verb, print_json

EXAMPLES = """\
  lmforge quickstart                                  # Python's own documentation, ~5 minutes
  lmforge quickstart --corpus stdlib-code             # a code model on the standard library's source
  lmforge quickstart --corpus my_notes/ --minutes 10  # your own text: a file, folder, glob or .jsonl
"""


def register(subparsers) -> None:
    from lmforge.data.corpus import BUILTIN_CORPORA

    p = add_verb(
        subparsers,
        "quickstart",
        help="clean text, train a tokenizer and a small GPT, evaluate and sample, in ~5 minutes",
        description="Run the lifecycle end to end: prepare → tokenizer → pretrain → evaluate (against a unigram\n"
        "baseline) → generate. With no --corpus it needs no download and no file of yours: it uses text\n"
        "that every Python installation carries.\n\nbuilt-in corpora:\n"
        + "\n".join(f"  {k}: {v}" for k, v in BUILTIN_CORPORA.items()),
        examples=EXAMPLES,
        func=run,
    )
    p.add_argument(
        "--corpus", default="stdlib-docs", help="a built-in corpus name, or your text (file/folder/glob)"
    )
    p.add_argument(
        "--out", default="lmforge-quickstart", help="folder for the data, the run and its checkpoints"
    )
    p.add_argument("--minutes", type=float, default=5.0, help="total time budget (training gets most of it)")
    p.add_argument("--preset", default="small", help="model size")
    p.add_argument("--vocab-size", type=int, default=4096, help="BPE vocabulary size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--max-steps", type=int, help="train exactly this many steps instead of filling the time budget"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an earlier quickstart in --out")
    p.add_argument("--json", action="store_true", help="print the figures as JSON at the end")


def run(args) -> int:
    from lmforge.quickstart import quickstart

    report = quickstart(
        corpus=args.corpus,
        out=args.out,
        minutes=args.minutes,
        preset=args.preset,
        vocab_size=args.vocab_size,
        seed=args.seed,
        overwrite=args.overwrite,
        max_steps=args.max_steps,
    )
    if args.json:
        print_json(report)
    return 0
