"""Where a small GPT's training step goes: torch.profiler over N steps, ops per step and self CPU time by op group.

    .venv/bin/python benchmarks/train_profile.py [--shape 4x128] [--steps 20] [--threads 1] [--json]

The step is train_throughput.py's (the same shapes, random batches, AdamW, loss, backward, clip 1.0, step,
zero_grad(set_to_none)). Every self CPU microsecond the profiler records is put in one group:

- by the op itself: `alloc/copies` (empty*, zeros, fill_, copy_, clone, cat, ...), `views` (view, transpose,
  split, ... metadata only), `autograd overhead` (the engine's evaluate_function frames, backward nodes,
  AccumulateGrad);
- otherwise by where it ran: the module whose forward ran it (attention matmuls = qkv/o projections, attention
  core = SDPA, MLP matmuls, GELU, layernorm, embedding, output layer, residual adds), its backward (the autograd
  node carries the sequence number of the forward op that made it), or the step phase (cross-entropy, clip,
  optimizer, zero_grad).

`--variant NAME` (repeatable) runs each listed variant (VARIANTS: lmforge as its trainer runs on a CPU, lmforge
without keeping freed memory in malloc, with foreach instead of fused AdamW, Hugging Face GPT-2 with and without)
in its own worker process; they take turns for `--rounds` timed rounds (the step time is their median, the speed
is against the first variant), then each is profiled. Timings on a loaded machine are noisy, alternating keeps
the ratios fair; the op counts are exact.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections import Counter, defaultdict

from common import ask, emit, machine, start_worker, stop_worker
from train_throughput import VOCAB, build, parse_shape

ALLOC_COPY = {
    "aten::empty",
    "aten::empty_like",
    "aten::empty_strided",
    "aten::zeros",
    "aten::zeros_like",
    "aten::ones_like",
    "aten::new_zeros",
    "aten::new_empty_strided",
    "aten::fill_",
    "aten::zero_",
    "aten::copy_",
    "aten::clone",
    "aten::contiguous",
    "aten::cat",
    "aten::stack",
    "aten::_to_copy",
    "aten::to",
    "aten::resize_",
}
VIEWS = {
    "aten::view",
    "aten::_unsafe_view",
    "aten::reshape",
    "aten::transpose",
    "aten::t",
    "aten::permute",
    "aten::expand",
    "aten::as_strided",
    "aten::split",
    "aten::split_with_sizes",
    "aten::slice",
    "aten::select",
    "aten::unsqueeze",
    "aten::squeeze",
    "aten::alias",
    "aten::detach",
    "detach",
    "aten::unbind",
    "aten::flatten",
    "aten::_reshape_alias",
    "aten::lift_fresh",
}
GROUPS = (
    "attention matmuls",
    "attention core (SDPA)",
    "MLP matmuls",
    "GELU",
    "layernorm",
    "embedding",
    "output layer",
    "residual adds",
    "cross-entropy",
    "clip_grad_norm",
    "optimizer step",
    "zero_grad",
    "alloc/copies",
    "views",
    "autograd overhead",
    "other",
)
PHASES = ("forward", "loss", "backward", "clip", "optimizer", "zero_grad")
# Variants of the step, each profiled in its own worker process: name -> (contender of train_throughput.build,
# keep freed memory in malloc (train.keep_freed_memory), build_optimizer options).
VARIANTS: dict[str, tuple[str, bool, dict]] = {
    "lmforge": ("lmforge", True, {}),  # what `lmforge pretrain` does on a CPU
    "lmforge-nokeep": ("lmforge", False, {}),
    "lmforge-foreach": ("lmforge", True, {"fused": False}),
    "hf": ("hf", False, {}),
    "hf-keep": ("hf", True, {}),
}
# Hugging Face GPT-2's module names, for `--variant hf`: the same groups as lmforge's.
HF_NAMES = {"c_attn": "qkv_proj", "c_proj": "o_proj", "c_fc": "up_proj", "act": "mlp", "ln_1": "attn_norm"}
HF_NAMES |= {"ln_2": "mlp_norm", "ln_f": "norm", "wte": "tok_emb", "wpe": "pos_emb"}


def module_group(name: str) -> str | None:
    """The group of a module's forward (its dotted name in the model), or None for containers."""
    name = name.removeprefix("transformer.").replace("h.", "blocks.", 1)
    leaf = name.rsplit(".", 1)[-1]
    if ".mlp." in name and leaf == "c_proj":
        return "MLP matmuls"
    leaf = HF_NAMES.get(leaf, leaf)
    if leaf in ("qkv_proj", "o_proj"):
        return "attention matmuls"
    if leaf == "attn":
        return "attention core (SDPA)"
    if leaf in ("up_proj", "down_proj", "gate_proj"):
        return "MLP matmuls"
    if leaf == "mlp":
        return "GELU"
    if leaf.endswith("norm"):
        return "layernorm"
    if leaf in ("tok_emb", "pos_emb"):
        return "embedding"
    if leaf == "lm_head":
        return "output layer"
    if name.startswith("blocks.") and name.count(".") == 1:
        return "residual adds"
    return None


def label_modules(model):
    """Forward hooks that open a profiler range `mod:<group>` around each module's forward."""
    from torch.autograd.profiler import record_function

    stack = []

    def enter(group):
        def pre(module, args):
            rf = record_function(f"mod:{group}")
            rf.__enter__()
            stack.append(rf)

        return pre

    def leave(module, args, output):
        stack.pop().__exit__(None, None, None)

    handles = []
    for name, module in model.named_modules():
        group = module_group(name) if name else None
        if group:
            handles.append(module.register_forward_pre_hook(enter(group)))
            handles.append(module.register_forward_hook(leave))
    return handles


def ancestors(event):
    parent = event.cpu_parent
    while parent is not None:
        yield parent
        parent = parent.cpu_parent


def classify(events) -> tuple[dict, dict, dict, dict]:
    """Self CPU microseconds by group and by phase, aten op counts by phase, and by group and op name."""
    # Forward ops that made autograd nodes: sequence number -> the group of the module (or phase) they ran in.
    seq_group: dict[int, str] = {}
    phase_group = {"loss": "cross-entropy", "clip": "clip_grad_norm", "optimizer": "optimizer step"}
    phase_group["zero_grad"] = "zero_grad"
    info = {}
    for ev in events:
        phase = scope = None
        for a in ancestors(ev):
            if scope is None and a.name.startswith("mod:"):
                scope = a.name[4:]
            if a.name.startswith("phase:"):
                phase = a.name[6:]
                break
        if ev.name.startswith("phase:"):
            phase = ev.name[6:]
        info[id(ev)] = (phase, scope)
        if phase == "forward" and ev.sequence_nr >= 0 and scope:
            seq_group.setdefault(ev.sequence_nr, scope)
        if phase == "loss" and ev.sequence_nr >= 0:
            seq_group.setdefault(ev.sequence_nr, "cross-entropy")
    by_group: dict[str, float] = defaultdict(float)
    by_phase: dict[str, float] = defaultdict(float)
    ops: dict[str, Counter] = defaultdict(Counter)
    detail: dict[str, Counter] = defaultdict(Counter)
    for ev in events:
        phase, scope = info[id(ev)]
        if ev.name.startswith(("phase:", "mod:")) or phase is None:
            continue
        self_us = ev.self_cpu_time_total
        by_phase[phase] += self_us
        if ev.name.startswith("aten::"):
            ops[phase]["aten ops"] += 1
            if not any(a.name.startswith("aten::") for a in ancestors(ev)):
                ops[phase]["top-level aten ops"] += 1
        if ev.name in ALLOC_COPY:
            group = "alloc/copies"
        elif ev.name in VIEWS:
            group = "views"
        elif (
            ev.name.startswith("autograd::engine::evaluate_function")
            or ev.name.endswith(("Backward0", "Backward1"))
            or "AccumulateGrad" in ev.name
        ):
            group = "autograd overhead"
        elif phase == "backward":
            node = next(
                (a for a in ancestors(ev) if a.name.startswith("autograd::engine::evaluate_function")), None
            )
            group = seq_group.get(node.sequence_nr, "other") if node is not None else "other"
        elif phase == "forward":
            group = scope or "other"
        else:
            group = phase_group.get(phase, "other")
        by_group[group] += self_us
        detail[group][f"{ev.name} [{phase}]"] += self_us
    return by_group, by_phase, ops, detail


def worker(variant: str, shape, threads: int, steps: int, top: int, conn) -> None:
    """One variant in its own process: ("time", n) runs n steps and replies the seconds; "profile" replies the
    profiler's tables over `steps` steps."""
    import torch
    import torch.nn.functional as F
    from torch.autograd.profiler import record_function
    from torch.profiler import ProfilerActivity, profile

    from lmforge.config import OptimConfig
    from lmforge.device import keep_freed_memory
    from lmforge.train.optim import build_optimizer

    kind, keep, optim_options = VARIANTS[variant]
    if keep:
        keep_freed_memory()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model, forward, _ = build(kind, shape)
    model.train()
    opt = build_optimizer(model, OptimConfig(lr=1e-3, weight_decay=0.1), torch.device("cpu"), **optim_options)
    _, _, block, batch = shape
    gen = torch.Generator().manual_seed(1)

    def step():
        data = torch.randint(VOCAB, (batch, block + 1), generator=gen)
        x, y = data[:, :-1], data[:, 1:]
        with record_function("phase:forward"):
            logits = forward(x, y)
        with record_function("phase:loss"):
            loss = F.cross_entropy(logits.float().reshape(-1, VOCAB), y.reshape(-1))
        with record_function("phase:backward"):
            loss.backward()
        with record_function("phase:clip"):
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        with record_function("phase:optimizer"):
            opt.step()
        with record_function("phase:zero_grad"):
            opt.zero_grad(set_to_none=True)
        return loss

    def timed(n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            loss = step()
        loss.item()
        return time.perf_counter() - t0

    def profiled() -> dict:
        handles = label_modules(model)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                step()
        for h in handles:
            h.remove()
        by_group, by_phase, ops, detail = classify(prof.events())
        total = sum(by_group.values())
        return {
            "variant": variant,
            "profiled_self_cpu_ms_per_step": round(total / steps / 1e3, 2),
            "ops_per_step": {p: {k: v / steps for k, v in ops[p].items()} for p in PHASES if p in ops},
            "aten_ops_per_step": sum(c["aten ops"] for c in ops.values()) / steps,
            "top_level_aten_ops_per_step": sum(c["top-level aten ops"] for c in ops.values()) / steps,
            "share_by_group": {g: round(by_group[g] / total, 4) for g in GROUPS if by_group.get(g)},
            "ms_per_step_by_group": {
                g: round(by_group[g] / steps / 1e3, 3) for g in GROUPS if by_group.get(g)
            },
            "share_by_phase": {p: round(by_phase[p] / total, 4) for p in PHASES if by_phase.get(p)},
            "top_ops_by_group": {
                g: {name: round(us / steps / 1e3, 3) for name, us in detail[g].most_common(top)}
                for g in GROUPS
                if detail.get(g)
            },
        }

    conn.send({"params": sum(p.numel() for p in model.parameters())})
    while True:
        message = conn.recv()
        if message is None:
            break
        if message == "profile":
            conn.send(profiled())
        else:
            conn.send(timed(message[1]))
    conn.close()


def run(
    variants: list[str], shape, threads: int, steps: int, warmup: int, rounds: int, top: int
) -> list[dict]:
    """Time the variants in alternating rounds of `steps` steps (median ms per step; the first is the reference),
    then profile each over `steps` steps."""
    workers = {v: start_worker(worker, v, shape, threads, steps, top) for v in variants}
    for v in variants:
        ask(*workers[v][:2], ("time", warmup))
    seconds: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(rounds):
        for v in variants:
            seconds[v].append(ask(*workers[v][:2], ("time", steps)))
    results = []
    reference = statistics.median(seconds[variants[0]])
    for v in variants:
        row = ask(*workers[v][:2], "profile")
        row["step_ms"] = round(statistics.median(seconds[v]) / steps * 1e3, 2)
        row["step_ms_per_round"] = [round(t / steps * 1e3, 2) for t in seconds[v]]
        row["speed_vs_first"] = round(reference / statistics.median(seconds[v]), 3)
        results.append(row)
    for w in workers.values():
        stop_worker(*w)
    return results


def table(results: list[dict]) -> str:
    """A Markdown table: one row per group (ms per step and share), one column pair per variant."""
    head = "| | " + " | ".join(r["variant"] for r in results) + " |"
    lines = [head, "|---" * (len(results) + 1) + "|"]

    def row(label, fn):
        lines.append(f"| {label} | " + " | ".join(fn(r) for r in results) + " |")

    row("step, median of the rounds (ms)", lambda r: f"{r['step_ms']:.2f}")
    row(f"speed vs {results[0]['variant']}", lambda r: f"{r['speed_vs_first']:.3f}x")
    row("self CPU under the profiler (ms)", lambda r: f"{r['profiled_self_cpu_ms_per_step']:.2f}")
    row(
        "aten ops per step (top-level)",
        lambda r: f"{r['aten_ops_per_step']:.0f} ({r['top_level_aten_ops_per_step']:.0f})",
    )
    for phase in PHASES:
        row(
            f"&nbsp;&nbsp;{phase}: aten ops (top-level)",
            lambda r, p=phase: (
                f"{r['ops_per_step'].get(p, {}).get('aten ops', 0):.0f} "
                f"({r['ops_per_step'].get(p, {}).get('top-level aten ops', 0):.0f})"
            ),
        )
    for group in GROUPS:
        if any(group in r["share_by_group"] for r in results):
            row(
                group,
                lambda r, g=group: (
                    f"{r['ms_per_step_by_group'].get(g, 0):.2f} ms ({100 * r['share_by_group'].get(g, 0):.1f}%)"
                ),
            )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--shape", default="4x128", help="LAYERSxWIDTH[:BLOCK:BATCH], 4x128 or 6x384 (default 4x128)"
    )
    ap.add_argument("--steps", type=int, default=20, help="steps per timed round, and profiled (default 20)")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds, variants alternating (default 3)")
    ap.add_argument("--warmup", type=int, default=10, help="steps before timing (default 10)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    ap.add_argument("--top", type=int, default=5, help="ops listed per group in the JSON (default 5)")
    ap.add_argument(
        "--variant",
        action="append",
        choices=list(VARIANTS),
        help="profile this variant in its own process (repeatable; default: lmforge lmforge-nokeep)",
    )
    ap.add_argument("--json", action="store_true", help="print JSON instead of the Markdown table")
    args = ap.parse_args()
    threads = args.threads or os.cpu_count() or 1
    shape = parse_shape(args.shape)
    variants = args.variant or ["lmforge", "lmforge-nokeep"]
    results = run(variants, shape, threads, args.steps, args.warmup, args.rounds, args.top)
    m = machine()
    if args.json:
        emit(
            {
                "benchmark": "train_profile",
                "shape": args.shape,
                "threads": threads,
                "results": results,
                "machine": m,
            }
        )
        return
    print(
        f"shape {args.shape} {shape}, {args.rounds} timed rounds and {args.steps} profiled steps, {threads} threads; "
        f"{m['cpu']}, torch {m['torch']}, commit {m['commit']}, {m['date']}\n"
    )
    print(table(results))


if __name__ == "__main__":
    main()
