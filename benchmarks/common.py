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


def peak_rss_mb() -> float:
    """Peak resident memory of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine() -> dict:
    import torch

    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
    except OSError:
        commit = None
    model = ""
    try:
        model = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit,
        "cpu": model,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }


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
            sys.exit(f"error: benchmark worker {proc.name} exited (code {proc.exitcode}); see its traceback above")
    return conn.recv()


def stop_worker(proc, conn, *_) -> None:
    conn.send(None)
    proc.join(timeout=30)
