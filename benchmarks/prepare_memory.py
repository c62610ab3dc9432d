"""Peak memory of `lmforge prepare` on generated corpora of growing size: streaming means it must stay flat.

    .venv/bin/python benchmarks/prepare_memory.py [--sizes-mb 250,600] [--work /tmp/lmforge-prep-bench]

The corpora are made here from WikiText-2 sentences (../shared/data): documents of 5-40 randomly drawn lines,
each unique, written to 64 MB text files and read with --doc-split paragraph. Each size runs `lmforge prepare`
in its own process under /usr/bin/time -v (peak RSS of that process) with a byte-level BPE tokenizer trained on
the first 200 MB (the default cap) and again with that tokenizer loaded from file. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import REPO, emit, machine, shared

FILE_BYTES = 64 * 1024 * 1024


def make_corpus(folder: Path, size_mb: int, seed: int = 0) -> int:
    lines = [ln.strip() for ln in shared("wikitext-2/train.txt").read_text(encoding="utf-8").splitlines()]
    lines = [ln for ln in lines if len(ln) > 40 and not ln.startswith("=")]
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    target, written, part, doc_id = size_mb * 1024 * 1024, 0, 0, 0
    fh = None
    while written < target:
        if fh is None or fh.tell() >= FILE_BYTES:
            if fh:
                fh.close()
            fh = open(folder / f"part-{part:03d}.txt", "w", encoding="utf-8")
            part += 1
        doc = (
            f"Document {doc_id}.\n" + "\n".join(rng.choice(lines) for _ in range(rng.randint(5, 40))) + "\n\n"
        )
        doc_id += 1
        written += fh.write(doc)
    fh.close()
    return written


def run_prepare(inputs: Path, out: Path, tokenizer: str) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [
        "/usr/bin/time",
        "-v",
        str(REPO / ".venv/bin/lmforge"),
        "prepare",
        str(inputs),
        "--out",
        str(out),
        "--tokenizer",
        tokenizer,
        "--vocab-size",
        "8192",
        "--doc-split",
        "paragraph",
        "--json",
    ]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"error: prepare failed: {proc.stderr[-2000:]}")
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    manifest = json.loads((out / "manifest.json").read_text())
    train, val = manifest["splits"]["train"], manifest["splits"]["val"]
    return {
        "peak_rss_mb": round(rss_kb / 1024),
        "seconds": round(seconds, 1),
        "documents": train["documents"] + val["documents"],
        "tokens": train["tokens"] + val["tokens"],
        "MB_per_s": None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes-mb", default="250,600")
    ap.add_argument("--work", default="/tmp/lmforge-prep-bench")
    args = ap.parse_args()
    work = Path(args.work)
    rows = []
    tokenizer_file = None
    for size in [int(s) for s in args.sizes_mb.split(",")]:
        corpus = work / f"corpus-{size}mb"
        shutil.rmtree(corpus, ignore_errors=True)
        n_bytes = make_corpus(corpus, size)
        trained = run_prepare(corpus, work / f"data-{size}mb", "bpe")
        trained["MB_per_s"] = round(n_bytes / 1e6 / trained["seconds"], 2)
        if tokenizer_file is None:
            tokenizer_file = work / "tokenizer.json"
            shutil.copy(work / f"data-{size}mb" / "tokenizer.json", tokenizer_file)
        shutil.rmtree(work / f"data-{size}mb", ignore_errors=True)
        loaded = run_prepare(corpus, work / f"data-{size}mb", str(tokenizer_file))
        loaded["MB_per_s"] = round(n_bytes / 1e6 / loaded["seconds"], 2)
        shutil.rmtree(work / f"data-{size}mb", ignore_errors=True)
        shutil.rmtree(corpus, ignore_errors=True)
        rows.append(
            {"corpus_mb": round(n_bytes / 1e6), "train_bpe_tokenizer": trained, "loaded_tokenizer": loaded}
        )
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    emit({"benchmark": "prepare peak memory", "runs": rows, "machine": machine()})


if __name__ == "__main__":
    main()
