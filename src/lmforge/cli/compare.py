"""`lmforge compare`: several model families, one corpus, one budget, one table and plot."""

from __future__ import annotations

from lmforge.cli.common import add_verb, print_json

EXAMPLES = """\
  lmforge compare --data ptb --archs ngram,lstm,gpt --budget-minutes 5 --out report
  lmforge compare --data data --archs lstm,gru,gpt --budget-tokens 2000000 --out report --train.threads 1
  lmforge compare --data ptb --archs lstm,gpt --budget-minutes 10 --out report --preset gpt=mini \\
      --lstm.model.n_hidden 512 --lstm.model.n_embd 512

Overrides: --section.key VALUE applies to every trained family, --ARCH.section.key VALUE to one of them.
Only causal language models are compared (ngram, rnn, lstm, gru, gpt); a masked LM (bert) is refused.
The report: REPORT_DIR/table.md, results.json and curves.png; each run stays in REPORT_DIR/runs/ARCH.
"""


def register(subparsers) -> None:
    from lmforge.compare import describe_defaults

    p = add_verb(
        subparsers,
        "compare",
        help="train several model families on the same data and budget, side by side",
        description="Train each family on the same data directory with the same budget (minutes of training or\n"
        "training tokens each; the n-gram is fitted in one pass), score each final model on the whole\n"
        "validation split and write a table (parameters, training time, tokens/s, validation loss,\n"
        "perplexity and bits per byte) and a plot of validation loss against tokens and time.\n\n"
        "defaults per family (override them as below):\n" + describe_defaults(),
        examples=EXAMPLES,
        func=run,
    )
    p.add_argument("--data", required=True, help="data directory written by `lmforge prepare`")
    p.add_argument("--archs", required=True, help="comma-separated families, in the order of the table")
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--budget-minutes", type=float, metavar="M", help="training time per family")
    budget.add_argument("--budget-tokens", type=int, metavar="N", help="training tokens per family")
    p.add_argument("--out", required=True, metavar="REPORT_DIR", help="folder for the report and the runs")
    p.add_argument(
        "--preset",
        action="append",
        default=[],
        metavar="ARCH=NAME",
        help="named preset for one family (repeatable), e.g. gpt=mini",
    )
    p.add_argument("--seed", type=int, help="train.seed of every trained family (default 1337)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(accepts_overrides=True)


def run(args) -> int:
    from lmforge.compare import compare, markdown_table
    from lmforge.config import parse_overrides
    from lmforge.errors import CheckpointError, ConfigError
    from lmforge.outputs import check_output

    # lmforge.outputs' rule: a new or empty folder, or an earlier comparison (which compare() itself refuses).
    check_output(
        args.out, own=lambda p: (p / "runs").exists() or (p / "results.json").exists(), error=CheckpointError
    )

    presets = {}
    for item in args.preset:
        arch, sep, name = item.partition("=")
        if not sep or not arch or not name:
            raise ConfigError(f"--preset {item!r} should look like ARCH=NAME, e.g. --preset gpt=mini")
        presets[arch.strip()] = name.strip()
    result = compare(
        data=args.data,
        archs=args.archs.split(","),
        out=args.out,
        budget_minutes=args.budget_minutes,
        budget_tokens=args.budget_tokens,
        overrides={
            **({} if args.seed is None else {"train.seed": args.seed}),
            **parse_overrides(args.overrides),
        },
        presets=presets,
        progress=not args.quiet,
    )
    if args.json:
        print_json(result)
    else:
        print(markdown_table(result["archs"]))
        print(f"report: {', '.join(result['files'].values())}")
    return 0
