"""`lmforge compare` of the n-gram, LSTM and GPT families on word-level Penn Treebank and WikiText-2.

    .venv/bin/python benchmarks/compare_families.py [--datasets ptb wikitext-2] [--budget-minutes 5]
        [--archs ngram,lstm,gpt] [--threads 1] [--work /tmp/lmforge-compare] [--out benchmarks/out/compare]

Both corpora are read the usual word-level way: one end-of-line token per non-empty line, the train split's
vocabulary (the files already map rare words to `<unk>`), each corpus's own validation file. Each family gets the
same minutes of training (the n-gram is fitted in one pass); the table scores the whole validation split.
Prints JSON; each dataset's table.md, results.json and curves.png go to OUT/DATASET (keep them out of git).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import REPO, emit, machine, peak_rss_mb, shared

DATASETS = {
    "ptb": ("ptb/ptb.train.txt", "ptb/ptb.valid.txt"),
    "wikitext-2": ("wikitext-2/train.txt", "wikitext-2/valid.txt"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", choices=sorted(DATASETS), default=list(DATASETS))
    ap.add_argument("--archs", default="ngram,lstm,gpt")
    ap.add_argument("--budget-minutes", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads per run")
    ap.add_argument("--work", default="/tmp/lmforge-compare", help="prepared data (not the repo)")
    ap.add_argument(
        "--out", default=str(REPO / "benchmarks" / "out" / "compare"), help="reports, one per dataset"
    )
    args = ap.parse_args()

    import lmforge
    from lmforge.compare import compare

    result = {
        "benchmark": "compare_families",
        "machine": machine(),
        "budget_minutes": args.budget_minutes,
        "threads": args.threads,
        "datasets": {},
    }
    for name in args.datasets:
        train, valid = DATASETS[name]
        data = Path(args.work) / name
        if not (data / "manifest.json").is_file():
            lmforge.prepare(
                [str(shared(train))],
                out=data,
                tokenizer="word",
                doc_split="line",
                dedup=False,
                val_inputs=[str(shared(valid))],
                progress=False,
            )
        report = Path(args.out) / name
        if report.exists():
            raise SystemExit(f"error: {report} exists; remove it or give another --out")
        res = compare(
            data,
            args.archs.split(","),
            report,
            budget_minutes=args.budget_minutes,
            overrides={"train.threads": args.threads},
            progress=False,
        )
        manifest = lmforge.data.shards.read_manifest(data)
        result["datasets"][name] = {
            "vocab_size": manifest["vocab_size"],
            "train_tokens": manifest["splits"]["train"]["tokens"],
            "val_tokens": manifest["splits"]["val"]["tokens"],
            "table": (report / "table.md").read_text(),
            "plot": str(report / "curves.png"),
            "archs": [
                {k: v for k, v in row.items() if k not in ("curve", "overrides")} for row in res["archs"]
            ],
        }
    result["peak_rss_mb"] = round(peak_rss_mb(), 1)
    emit(result)


if __name__ == "__main__":
    main()
