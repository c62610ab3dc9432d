"""`lmforge split`: a labelled task file cut into train/dev/test files, stratified by label and leak-free by group."""

from __future__ import annotations

from lmforge.cli.common import add_overwrite_option, add_verb, print_json

DESCRIPTION = """\
Split a labelled task file (.csv, .tsv, .jsonl, or CoNLL .txt/.conll for NER) into OUT/train, OUT/dev and
OUT/test in the same format (same columns, same header). --stratify gives each split each label's share
exactly (per-label counts by largest-remainder rounding); --group keeps every value of a field (a speaker,
a source document; `document` for a CoNLL file's -DOCSTART- documents) inside one split, so nothing leaks
from training into evaluation. The same --seed gives the same split. Fields are header names, or 0-based
column numbers for files without a header row.
"""

EXAMPLES = """\
  lmforge split reviews.tsv --out reviews-split --val 0.1 --test 0.1 --stratify label
  lmforge split tickets.jsonl --out tickets-split --stratify intent --group customer_id --seed 1 --json
  lmforge split ag_news.tsv --out ag-split --stratify 1            # no header: the label is column 1
  lmforge split conll/train.txt --out conll-split --group document  # whole documents per split
"""


def register(subparsers) -> None:
    p = add_verb(
        subparsers,
        "split",
        help="split a labelled file into train/dev/test (stratified, grouped)",
        description=DESCRIPTION,
        examples=EXAMPLES,
        func=run,
    )
    p.add_argument("file", metavar="FILE", help="labelled file: .csv, .tsv, .jsonl, or CoNLL (.txt, .conll)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for train/dev/test files")
    p.add_argument("--val", type=float, default=0.1, help="fraction of examples in OUT/dev (0: no dev file)")
    p.add_argument(
        "--test", type=float, default=0.1, help="fraction of examples in OUT/test (0: no test file)"
    )
    p.add_argument(
        "--stratify",
        metavar="LABEL_FIELD",
        help="give every split each label's share exactly (default: a plain random split)",
    )
    p.add_argument(
        "--group",
        metavar="FIELD",
        help="keep all examples with one value of FIELD in one split (CoNLL: `document`)",
    )
    p.add_argument("--seed", type=int, default=0, help="the shuffle's seed: the same seed, the same split")
    p.add_argument(
        "--no-header",
        action="store_true",
        help="the CSV/TSV has no header row (implied when the fields are column numbers)",
    )
    add_overwrite_option(p, "FILE")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args) -> int:
    from lmforge.data.split import SPLITS, SplitOptions, split_file

    options = SplitOptions(
        val=args.val,
        test=args.test,
        stratify=args.stratify,
        group=args.group,
        seed=args.seed,
        no_header=args.no_header,
    )
    report = split_file(args.file, args.out, options, overwrite=args.overwrite)
    if args.json:
        print_json(report)
        return 0
    print(f"split {report['examples']:,} examples of {report['input']} (seed {report['seed']}):")
    for name in SPLITS:
        if name in report:
            entry = report[name]
            share = entry["examples"] / report["examples"]
            groups = f", {entry['groups']:,} groups" if "groups" in entry else ""
            labels = ", ".join(f"{k}: {v:,}" for k, v in entry.get("labels", {}).items())
            print(
                f"  {name:5} {entry['examples']:>8,} ({share:6.1%}){groups}  {entry['file']}"
                + (f"\n        {labels}" if labels else "")
            )
    return 0
