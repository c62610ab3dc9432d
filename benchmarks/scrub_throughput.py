"""Throughput of PII scrubbing (`lmforge scrub`, the code `prepare --scrub-pii` runs) on a generated ~100 MB file.

    .venv/bin/python benchmarks/scrub_throughput.py [--size-mb 100] [--work /tmp/lmforge-scrub-bench]

The file is made here: lines of prose from WikiText-2 (../shared/data) when it is there, else of random words,
mixed with look-alikes (version numbers, dates, prices, hashes, code) and, on one line in 20, one planted item
of a random PII type. `lmforge scrub FILE --out OUT --json` runs in its own process; prints JSON with MB/s
(input bytes over the scrub's own wall time, reading and writing included) and the counts.
"""

from __future__ import annotations

import argparse
import json
import random
import string
import subprocess
import sys
import time
from pathlib import Path

from common import REPO, SHARED_DATA, emit, machine

sys.path.insert(0, str(REPO / "tests"))
from test_scrub import CONTROL, planted_items  # noqa: E402  (the test's generators: one definition)


def make_file(path: Path, size_mb: int, seed: int = 0) -> int:
    rng = random.Random(seed)
    wiki = SHARED_DATA / "wikitext-2" / "train.txt"
    if wiki.is_file():
        prose = [ln.strip() for ln in wiki.read_text(encoding="utf-8").splitlines() if len(ln.strip()) > 40]
    else:
        words = [
            "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(2, 9))) for _ in range(5000)
        ]
        prose = [" ".join(rng.choices(words, k=rng.randint(8, 30))) for _ in range(20000)]
    looks = CONTROL.splitlines()
    items = [text for _, text in planted_items(rng)]
    planted = 0
    with open(path, "w", encoding="utf-8") as fh:
        while fh.tell() < size_mb * 1_000_000:
            for _ in range(1000):
                r = rng.random()
                line = rng.choice(prose)
                if r < 0.05:
                    line += " contact: " + rng.choice(items)
                    planted += 1
                elif r < 0.10:
                    line += " " + rng.choice(looks)
                fh.write(line + "\n")
    return planted


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mb", type=int, default=100)
    ap.add_argument("--work", default="/tmp/lmforge-scrub-bench")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    src, out = work / "input.txt", work / "scrubbed.txt"
    planted = make_file(src, args.size_mb)
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "lmforge", "scrub", str(src), "--out", str(out), "--overwrite", "--json"],
        check=True,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - started
    report = json.loads(proc.stdout)
    emit(
        {
            "benchmark": "scrub_throughput",
            "input_mb": round(report["bytes"] / 1e6, 1),
            "planted_lines": planted,
            "replaced": report["total"],
            "counts": report["counts"],
            "scrub_seconds": report["seconds"],
            "mb_per_s": report["mb_per_s"],
            "process_wall_s": round(wall, 1),
            "machine": machine(),
        }
    )


if __name__ == "__main__":
    main()
