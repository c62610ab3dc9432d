"""Distributed training on one machine: 1 process x T threads against P processes x T/P threads (DDP and FSDP),
pretraining the same GPT on the same global batches.

    .venv/bin/python benchmarks/distributed_scaling.py [--shape 6x384] [--steps 30] [--rounds 2]

Prints JSON: per contender, the median training tokens/s (after the first log window, which holds the warm-up),
the ratio to the single process, and per rank the peak RSS and the bytes of parameters + optimizer state the rank
holds (FSDP should hold about 1/P of DDP's). Every contender runs `lmforge`'s own Trainer in fresh processes under
`torchrun` (the single process without it), in turns, `--rounds` times. On CUDA the distributed contenders take all
visible GPUs (one process each) and the single one takes one GPU. Data: tiny Shakespeare, characters.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import emit, machine, peak_rss_mb, shared

SHAPES = {"4x128": (4, 128, 64, 12), "6x384": (6, 384, 256, 8)}  # layers, width, block, global batch


def worker(args) -> None:
    """One rank (or the single process): train, then report speed and memory as one JSON line per rank."""
    import torch

    from lmforge.config import build_run_config
    from lmforge.tasks.lm.run import pretrain_spec
    from lmforge.train.trainer import Trainer

    n_layer, n_embd, block, batch = SHAPES[args.shape]
    overrides = {
        "model.n_layer": n_layer,
        "model.n_head": n_layer,
        "model.n_embd": n_embd,
        "model.block_size": block,
        "model.dropout": 0.0,
        "train.batch_size": batch,
        "train.max_steps": args.steps,
        "train.eval_every": 10**6,
        "train.log_every": 5,
        "train.tensorboard": False,
        "train.strategy": args.strategy if args.strategy != "single" else "auto",
    }
    if args.threads:
        overrides["train.threads"] = args.threads
    cfg = build_run_config("gpt", overrides=overrides)
    run_dir = Path(args.out)
    trainer = Trainer(cfg, pretrain_spec(cfg, args.data), run_dir, progress=False)
    trainer.run()

    def local_bytes(t) -> int:
        local = t.to_local() if hasattr(t, "to_local") else t
        return local.numel() * local.element_size()

    params = sum(local_bytes(p) for p in trainer.model.parameters())
    optim = sum(
        local_bytes(v)
        for s in trainer.optimizer.state.values()
        for v in s.values()
        if isinstance(v, torch.Tensor)
    )
    rank = int(os.environ.get("RANK", "0"))
    if rank == 0:
        windows = [
            r["tokens_per_s"]
            for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
            if "loss" in r
        ]
    else:
        windows = []
    report = {
        "rank": rank,
        "peak_rss_mb": round(peak_rss_mb()),
        "param_optimizer_mb": round((params + optim) / 2**20, 1),
        "tokens_per_s": statistics.median(windows[1:] or windows) if windows else None,
        "threads": torch.get_num_threads(),
    }
    with open(f"{args.report}.{rank}", "w", encoding="utf-8") as fh:
        json.dump(report, fh)


def run_contender(name: str, data: Path, shape: str, steps: int, procs: int, threads: int, tmp: Path) -> dict:
    report = tmp / f"{name}.json"
    one = [__file__, "--one", name, "--data", str(data), "--shape", shape, "--steps", str(steps)]
    one += ["--out", str(tmp / f"run-{name}"), "--report", str(report), "--threads", str(threads)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore")
    if name == "single":
        cmd = [sys.executable, *one]
    else:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={procs}",
            *one,
        ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"error: {name} failed:\n{proc.stderr[-3000:]}")
    ranks = [json.loads(p.read_text()) for p in sorted(tmp.glob(f"{name}.json.*"))]
    for p in tmp.glob(f"{name}.json.*"):
        p.unlink()
    subprocess.run(["rm", "-rf", str(tmp / f"run-{name}")])
    return {"tokens_per_s": ranks[0]["tokens_per_s"], "ranks": ranks}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="6x384", choices=sorted(SHAPES))
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--procs", type=int, default=2, help="processes of the distributed contenders")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--strategy", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--report", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        args.strategy = args.one
        worker(args)
        return
    import torch

    cores = os.cpu_count() or 2
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        from lmforge.data.prepare import prepare

        data = tmp / "data"
        prepare([str(shared("tinyshakespeare/input.txt"))], str(data), tokenizer="char", progress=False)
        gpus = torch.cuda.device_count()
        procs = gpus or args.procs
        plan = {
            "single": (1, cores),
            "ddp": (procs, max(1, cores // procs)),
            "fsdp": (procs, max(1, cores // procs)),
        }
        results: dict[str, list[dict]] = {name: [] for name in plan}
        for _ in range(args.rounds):
            for name, (n, threads) in plan.items():
                results[name].append(run_contender(name, data, args.shape, args.steps, n, threads, tmp))
    single = statistics.median(r["tokens_per_s"] for r in results["single"])
    summary = {}
    for name, runs in results.items():
        tps = statistics.median(r["tokens_per_s"] for r in runs)
        summary[name] = {
            "processes_x_threads": f"{plan[name][0]}x{plan[name][1]}",
            "tokens_per_s": round(tps),
            "vs_single": round(tps / single, 2),
            "per_rank": runs[-1]["ranks"],
        }
    emit(
        {
            "machine": machine(),
            "shape": args.shape,
            "steps": args.steps,
            "rounds": args.rounds,
            "results": summary,
        }
    )


if __name__ == "__main__":
    main()
