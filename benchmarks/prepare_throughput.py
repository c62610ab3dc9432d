"""`lmforge prepare` against the tokenizer's own speed (issue 20 part 5): MB/s and peak RSS, side by side.

    .venv/bin/python benchmarks/prepare_throughput.py [--size-mb 200] [--rounds 2] [--work /tmp/lmforge-prep-tput]
        [--runs raw,raw-fast,prepare,near]

The corpus is WikiText-2's training text (../shared/data) repeated up to --size-mb, written as 64 MB .txt files
and read with `--doc-split paragraph` (WikiText's blank-line separated blocks: headings and sections). Copy 0 is
the text as it is; every further copy k is varied so that deduplication keeps it, as a corpus without repeats
would be kept: each non-blank line starts with the copy number ("k "), which defeats exact dedup, and the
sentences (split at " . ") of the copy's body lines are shuffled across the whole copy with a seeded RNG and put
back into lines of the original sentence counts, which keeps real sentences (and their tokens) but defeats
near-dedup's word 3-gram similarity. A byte-level BPE tokenizer of 8,192 tokens is trained once on WikiText-2
train (`Tokenizer.train("bpe", ...)`) and saved; every contender loads that file.

Contenders, each in its own process (its own peak RSS), turns alternating over --rounds (common.run_alternating):

- raw:      `tokenizers.Tokenizer.encode_batch(texts, add_special_tokens=False)` alone on the same paragraphs,
            in batches of about 4 MB (prepare's batch size), reading the files included, ids touched (len(ids)).
- raw-fast: the same with `encode_batch_fast` (no character offsets; what prepare calls when it exists).
- prepare:  `lmforge.data.prepare.prepare(..., tokenizer=FILE, doc_split="paragraph")`: read, clean (NFC,
            whitespace), exact dedup, encode, write shards, manifest.
- near:     the same with `near_dedup=0.8` (MinHash LSH over word 3-grams, numpy signatures).
- near-datasketch (not run by default): the same with `near_dedup_method="datasketch"`, the former path.

MB/s is the corpus's input bytes over the contender's wall time (median of the rounds). Prints JSON with the ratios
prepare / raw, prepare / raw-fast and near time / prepare time, CPU-time ratios (robust to other jobs sharing the
cores, blind to idle ones), and the CPU's model and flags (common.machine).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import resource
import shutil
import statistics
import time
from pathlib import Path

from common import emit, machine, peak_rss_mb, run_alternating, shared

FILE_BYTES = 64 * 1024 * 1024
RUNS = ("raw", "raw-fast", "prepare", "near", "near-datasketch")
DEFAULT_RUNS = RUNS[:4]
BATCH_BYTES = 4 << 20  # prepare's ENCODE_BATCH_BYTES
PARAGRAPH_BREAK = re.compile(r"\n[^\S\n]*\n(?:[^\S\n]*\n)*")  # lmforge.data.sources' paragraph separator


def varied_copy(lines: list[str], k: int) -> str:
    """Copy k of WikiText's lines: copy 0 as is, others with sentences shuffled across the copy and "k " in front
    of every non-blank line (see the module docstring)."""
    if k == 0:
        return "\n".join(lines) + "\n"
    body = [i for i, ln in enumerate(lines) if ln.strip() and not ln.lstrip().startswith("=")]
    split = [lines[i].strip().split(" . ") for i in body]
    sentences = [s for parts in split for s in parts]
    random.Random(k).shuffle(sentences)
    out = list(lines)
    pos = 0
    for i, parts in zip(body, split):
        out[i] = " . ".join(sentences[pos : pos + len(parts)])
        pos += len(parts)
    return "\n".join(f"{k} {ln.strip()}" if ln.strip() else ln for ln in out) + "\n"


def make_corpus(folder: Path, size_mb: int) -> int:
    """WikiText-2 train repeated (and varied) to `size_mb` MB in 64 MB files; returns the bytes written."""
    done = folder.with_name(folder.name + ".done")  # outside the folder: prepare reads every file in it
    if done.is_file():
        return int(done.read_text())
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    lines = shared("wikitext-2/train.txt").read_text(encoding="utf-8").split("\n")
    target, written, part, k = size_mb * 1_000_000, 0, 0, 0
    fh = None
    while written < target:
        text = varied_copy(lines, k).encode("utf-8")[: target - written]
        text = text[: text.rfind(b"\n") + 1] or text
        k += 1
        if fh is None or fh.tell() >= FILE_BYTES:
            if fh:
                fh.close()
            fh = open(folder / f"part-{part:03d}.txt", "wb")
            part += 1
        fh.write(text)
        written += len(text)
    fh.close()
    done.write_text(str(written))
    return written


def make_tokenizer(path: Path) -> None:
    if path.is_file():
        return
    from lmforge.tokenizers import Tokenizer

    text = shared("wikitext-2/train.txt").read_text(encoding="utf-8")
    tok = Tokenizer.train("bpe", PARAGRAPH_BREAK.split(text), vocab_size=8192)
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(path.parent)


def raw_encode(corpus: Path, tokenizer: Path, fast: bool) -> dict:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer))
    encode = tok.encode_batch_fast if fast else tok.encode_batch
    tokens = docs = 0
    for path in sorted(corpus.glob("part-*.txt")):
        text = path.read_text(encoding="utf-8")
        paragraphs = [p for p in PARAGRAPH_BREAK.split(text) if p.strip()]
        del text
        batch, nbytes = [], 0
        for p in paragraphs + [None]:
            if p is not None:
                batch.append(p)
                nbytes += len(p)
            if batch and (p is None or nbytes >= BATCH_BYTES):
                tokens += sum(len(e.ids) for e in encode(batch, add_special_tokens=False))
                docs += len(batch)
                batch, nbytes = [], 0
    return {"tokens": tokens, "documents": docs}


def lmforge_prepare(corpus: Path, tokenizer: Path, out: Path, near: float | None, method: str) -> dict:
    from lmforge.data.prepare import prepare

    m = prepare(
        str(corpus),
        str(out),
        tokenizer=str(tokenizer),
        doc_split="paragraph",
        near_dedup=near,
        near_dedup_method=method,
        overwrite=True,
        progress=False,
    )
    shutil.rmtree(out, ignore_errors=True)
    return {
        "tokens": sum(s["tokens"] for s in m["splits"].values()),
        "documents": sum(s["documents"] for s in m["splits"].values()),
        "removed": m["removed"],
    }


def one_run(args) -> dict:
    work = Path(args.work)
    corpus, tokenizer = work / f"corpus-{args.size_mb}mb", work / "tokenizer.json"
    nbytes = sum(p.stat().st_size for p in corpus.glob("part-*.txt"))
    start, cpu = time.perf_counter(), cpu_seconds()
    if args.one in ("raw", "raw-fast"):
        result = raw_encode(corpus, tokenizer, fast=args.one == "raw-fast")
    else:
        near = 0.8 if args.one.startswith("near") else None
        method = "datasketch" if args.one == "near-datasketch" else "numpy"
        result = lmforge_prepare(corpus, tokenizer, work / f"out-{args.one}", near, method)
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    return {
        "run": args.one,
        "seconds": seconds,
        "cpu_seconds": cpu,
        "MB_per_s": nbytes / 1e6 / seconds,
        "peak_rss_mb": round(peak_rss_mb()),
        **result,
    }


def cpu_seconds() -> float:
    """CPU time of this process, all its threads (user + system): what a contender costs when the cores are shared."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=int, default=200, help="corpus size in MB (default 200)")
    ap.add_argument("--rounds", type=int, default=2, help="turns of every contender (default 2)")
    ap.add_argument(
        "--runs",
        default=",".join(DEFAULT_RUNS),
        help=f"contenders, comma-separated, of {', '.join(RUNS)} (default {','.join(DEFAULT_RUNS)})",
    )
    ap.add_argument("--work", default="/tmp/lmforge-prep-tput", help="corpus, tokenizer and outputs")
    ap.add_argument("--one", choices=RUNS, help=argparse.SUPPRESS)  # internal: one run
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one_run(args)))
        return
    runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    if unknown := set(runs) - set(RUNS):
        ap.error(f"unknown runs {sorted(unknown)}; choose from {', '.join(RUNS)}")
    work = Path(args.work)
    nbytes = make_corpus(work / f"corpus-{args.size_mb}mb", args.size_mb)
    make_tokenizer(work / "tokenizer.json")
    options = ["--size-mb", str(args.size_mb), "--work", str(work)]
    results = run_alternating(__file__, runs, options, args.rounds)
    rows = {
        run: {
            "MB_per_s": round(statistics.median(r["MB_per_s"] for r in rs), 3),
            "seconds": round(statistics.median(r["seconds"] for r in rs), 2),
            "all_seconds": [round(r["seconds"], 2) for r in rs],
            "cpu_seconds": round(statistics.median(r["cpu_seconds"] for r in rs), 2),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in rs),
            "tokens": rs[0]["tokens"],
            "documents": rs[0]["documents"],
            **({"removed": rs[0]["removed"]} if "removed" in rs[0] else {}),
        }
        for run, rs in results.items()
    }
    ratios = {}
    for a, b in (("prepare", "raw"), ("prepare", "raw-fast"), ("near", "raw")):
        if a in rows and b in rows:
            ratios[f"{a}_MBps / {b}_MBps"] = round(rows[a]["MB_per_s"] / rows[b]["MB_per_s"], 3)
    for near in ("near", "near-datasketch"):
        if near in rows and "prepare" in rows:
            ratios[f"{near}_seconds / prepare_seconds"] = round(
                rows[near]["seconds"] / rows["prepare"]["seconds"], 3
            )
    for a, b in (("prepare", "raw-fast"), ("near", "prepare"), ("near-datasketch", "prepare")):
        if a in rows and b in rows:  # robust to other jobs on the machine, blind to idle cores
            ratios[f"{a}_cpu / {b}_cpu"] = round(rows[a]["cpu_seconds"] / rows[b]["cpu_seconds"], 3)
    emit(
        {
            "benchmark": "prepare_throughput",
            "corpus": f"WikiText-2 train repeated and varied, {nbytes / 1e6:.1f} MB, --doc-split paragraph",
            "tokenizer": "byte-level BPE, 8,192 tokens, loaded from file",
            "rounds": args.rounds,
            "runs": rows,
            "ratios": ratios,
            "machine": machine(),
        }
    )


if __name__ == "__main__":
    main()
