"""The one training loop: every architecture, objective and task trains here.

What varies between runs is a value, not a subclass: a `RunSpec` says what this run trains on (its objective and
tokenizer), how to build its model and how to save and restore its weights, how it is validated and which
validation metric picks the best checkpoint, and what its checkpoints and model card say. Pretraining
(tasks/lm), every fine-tuning task (tasks/*/run.py), distillation and prune-recovery (compress/) build a spec
and hand it to `Trainer(cfg, spec, run_dir).run()`.

Per optimizer step: set the scheduled learning rate, draw `grad_accum` micro-batches, backpropagate their summed
token loss divided by the tokens of the whole accumulated batch, clip, step. Every `eval_every` steps: validation
loss, then a checkpoint. Everything needed to continue exactly (optimizer, step, RNG states, data position) is in
the checkpoint, so `--resume` reproduces the uninterrupted run's loss curve bit for bit on CPU.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import shutil
import signal
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lmforge import checkpoint as ckpt
from lmforge.config import RunConfig
from lmforge.device import autocast, autocast_dtype, keep_freed_memory, matmul_width
from lmforge.errors import CheckpointError, ConfigError, TrainingError
from lmforge.eval.perplexity import describe_scores
from lmforge.extras import available
from lmforge.outputs import remove
from lmforge.tokenizers import Tokenizer
from lmforge.train.distributed import Parallel, indexed_optimizer_state
from lmforge.train.optim import build_optimizer, lr_at, warmup_for, warmup_note
from lmforge.train.progress import TrainProgress


@dataclass
class RunResult:
    run_dir: Path
    step: int
    tokens: int
    stop_reason: str  # max_steps | max_minutes | max_tokens | early_stop | stopped | interrupted | fitted
    latest: Path | None = None
    best: Path | None = None
    metrics: dict = field(
        default_factory=dict
    )  # the last evaluation: val_loss, val_perplexity, val_bits_per_byte
    seconds: float = 0.0
    tokens_per_s: float = 0.0


def _same_model(model: nn.Module) -> nn.Module:
    return model


def _no_state(model: nn.Module) -> dict:
    return {}


@dataclass
class WeightsIO:
    """How a run's weights reach a checkpoint and come back on resume. The default saves the trained module as it
    is; LoRA fine-tuning (train/lora.py) saves merged weights and keeps its adapters in the train state."""

    to_save: Callable[[nn.Module], nn.Module] = _same_model
    extra_state: Callable[[nn.Module], dict] = _no_state  # merged into train_state.pt
    # (model, checkpoint path, train state) -> None; None loads the checkpoint's weights into the model.
    restore: Callable[[nn.Module, Path, dict], None] | None = None


class TrainHook:
    """A change to how the one loop trains, plugged into a RunSpec instead of the loop (DP-SGD: train/privacy.py).
    Every method has a do-nothing default."""

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """The model to train (and save), from the one `build_model` made; before the optimizer is built."""
        return model

    def wrap(
        self, model: nn.Module, optimizer: torch.optim.Optimizer
    ) -> tuple[nn.Module, torch.optim.Optimizer]:
        """The module the loss runs through and the optimizer that steps; once, before training."""
        return model, optimizer

    def after_step(self, step: int) -> dict:
        """Called after each optimizer step; scalar metrics logged with the step and kept in results."""
        return {}

    def describe(self) -> str:
        """A note added to each validation's progress line."""
        return ""

    def card(self) -> list[str]:
        """Lines of the model card's Training section."""
        return []

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


@dataclass
class RunSpec:
    """What a kind of run plugs into the one loop."""

    tokenizer: Tokenizer
    objective: Any  # train/objectives.py: next_batch, count_targets, loss_sum, state_dict, load_state_dict
    build_model: Callable[
        [], nn.Module
    ]  # called after seeding: the initial weights are a function of the seed
    # (model, device, autocast dtype) -> scores as evaluate() returns them ("loss" at least), or None
    validate: Callable[[nn.Module, torch.device, torch.dtype | None], dict | None] | None = None
    selection: tuple[str, str] = (
        "val_loss",
        "min",
    )  # the metric that picks `best` (and early-stops), min or max
    data_size: str = ""  # "12,345 training tokens", for the first progress line
    data_info: dict = field(default_factory=dict)  # the checkpoint config's "data"
    data_card: list[str] = field(default_factory=list)  # the model card's "Data" lines
    config_extras: dict = field(default_factory=dict)  # more top-level keys of every checkpoint's config.json
    usage: str = "generate {run} --prompt 'Hello'"  # the command the model card suggests ({run}: the run dir)
    resume_hint: str = (
        "continue with the same command plus --resume"  # told on an interrupt ({run}: the run dir)
    )
    # (saved checkpoint config, its train state) -> None; raises CheckpointError when this run cannot continue it
    check_resume: Callable[[dict, dict], None] | None = None
    weights: WeightsIO = field(default_factory=WeightsIO)
    hook: TrainHook | None = None  # how training itself changes (DP-SGD); None: plain training
    # (step, the val_* metrics of this evaluation) -> True to stop the run now (stop_reason "stopped"); called
    # after every validation, e.g. to report intermediate values to a hyperparameter search that prunes runs
    on_evaluate: Callable[[int, dict], bool] | None = None


def is_peer_failure(exc: BaseException) -> bool:
    """An error raised by a collective because another rank died or hung (gloo, nccl or the store)."""
    import torch.distributed as dist

    if isinstance(exc, getattr(dist, "DistError", ())):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(
        sign in text
        for sign in ("Connection closed by peer", "Connection reset", "Timed out", "timed out", "Gloo")
    )


def memory_bytes(device: torch.device) -> int | None:
    """The memory of `device` (a GPU's, or the machine's RAM for the CPU), or None where it cannot be told."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None


def check_batch_fits(model: nn.Module, cfg: RunConfig, device: torch.device) -> None:
    """Refuse a batch whose activations cannot fit in memory, before a run writes anything: a batch of
    batch_size x block_size tokens holds at least one embedding vector (4 bytes per value) per token, and an
    allocation larger than the memory would be refused at the first step or get the process killed."""
    block = getattr(cfg.model, "block_size", None)
    width = next((m.embedding_dim for m in model.modules() if isinstance(m, nn.Embedding)), None)
    have = memory_bytes(device)
    if not block or not width or not have:
        return
    need = cfg.train.batch_size * block * width * 4
    if need > have:
        raise ConfigError(
            f"train.batch_size {cfg.train.batch_size:,} cannot fit: one batch of {cfg.train.batch_size:,} x "
            f"{block:,} tokens needs at least {need / 2**30:,.0f} GiB for its activations and {device} has "
            f"{have / 2**30:,.1f} GiB; lower the batch size"
        )


class Trainer:
    # Under bf16 autocast on a CPU, objectives that pad each batch to its longest row (those with a `round_to`:
    # translation/summarization pairs, chat and other labelled sequences) pad to a multiple of this, or of an eighth
    # of the width's power of two when larger (objectives.padded_width): every new width is a new matrix shape, and
    # oneDNN builds and caches a kernel per shape (RESULTS.md "Padded lengths"). seq2seq-small on Multi30k, 400
    # steps: peak RSS 1,554 -> 1,113 MB at the same speed; chat on DailyDialog, GPT 6x384, 150 steps: padded
    # 7,634 -> 2,682 MB and 1.40x conversations/s, packed 5,167 -> 2,401 MB and 1.14x. In fp32 (MKL builds nothing
    # per shape) rounding only cost time (Multi30k 99.7 -> 112.8 s), so it stays off there.
    ROUND_LENGTHS = 8

    def __init__(
        self,
        cfg: RunConfig,
        spec: RunSpec,
        run_dir: str | Path,
        progress: bool = True,
        resume_from: Path | None = None,
    ):
        self.cfg, self.spec, self.run_dir = cfg, spec, Path(run_dir)
        self.tokenizer, self.objective = spec.tokenizer, spec.objective
        cfg.validate()
        if cfg.train.group_by_length and getattr(self.objective, "lengths", None) is None:
            raise ConfigError(
                f"train.group_by_length applies to fine-tuning on labelled examples (classify, nli, ner, chat, "
                f"translate, summarize); this run's objective ({self.objective.name}) draws no such batches"
            )
        if cfg.train.pack == "true" and not getattr(self.objective, "packs", False):
            raise ConfigError(
                f"train.pack applies to causal-LM fine-tuning (chat, and translate/summarize with a gpt "
                f"model); this run's objective ({self.objective.name}) does not pack"
            )
        t = cfg.train
        if t.threads:
            torch.set_num_threads(t.threads)
        if resume_from is not None and t.tensor_parallel > 1 and "WORLD_SIZE" not in os.environ:
            # How a run was spread is not part of what it trains: one process may continue a tensor-parallel run.
            print(f"resuming in one process: train.tensor_parallel {t.tensor_parallel} -> 1", flush=True)
            t.tensor_parallel = 1
        # Under torchrun: join the process group; one process otherwise (train/distributed.py).
        self.parallel = Parallel.join(t.strategy, t.tensor_parallel, t.device, t.dist_timeout)
        self.device = self.parallel.device
        if t.keep_freed_memory and self.device.type == "cpu":
            keep_freed_memory()
        self.progress_enabled = progress and self.parallel.main
        if self.parallel.distributed:
            self._check_distributable()
        self.parallel.check_batch(t.batch_size)

        # Seed before building the model: the initial weights are a function of the seed.
        torch.manual_seed(t.seed)
        random.seed(t.seed)
        np.random.seed(t.seed % 2**32)
        if t.dp_epsilon is not None and spec.hook is None:
            raise ConfigError(
                "train.dp_epsilon (DP-SGD) is supported for classify, nli, chat, lm and gpt pretraining only so far"
            )
        self.hook = spec.hook or TrainHook()
        self.hook_metrics: dict = {}
        model = self.hook.prepare_model(spec.build_model()).to(self.device)
        # precision auto on a CPU depends on the model (device.cpu_bf16_pays). DP-SGD keeps fp32 unless asked:
        # Opacus's per-example gradients under bf16 autocast were not measured.
        self.amp_dtype = autocast_dtype(
            self.device, t.precision, model if t.dp_epsilon is None or self.device.type != "cpu" else None
        )
        if self.device.type == "cpu" and self.amp_dtype is not None and hasattr(spec.objective, "round_to"):
            spec.objective.round_to = self.ROUND_LENGTHS
        check_batch_fits(model, cfg, self.device)
        self.parallel.resolve_strategy(model, memory_bytes(self.device))
        if self.parallel.distributed:
            self.parallel.check_same(self._fingerprint(resume_from))
        self.model = self.parallel.spread(model)
        # The fused AdamW kernel takes plain tensors only; sharded (DTensor) parameters step with foreach.
        self.optimizer = build_optimizer(
            self.model, cfg.optim, self.device, fused=not self.parallel.sharded, foreach=self.parallel.tp == 1
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.data_gen = torch.Generator().manual_seed(t.seed + 1)
        self.step = 0
        self.tokens = 0
        self.elapsed = 0.0  # training wall time across resumes
        self.best_val = math.inf  # the selection metric of the best checkpoint, as a "lower is better" score
        self.evals_since_best = 0
        self.window = {"loss": 0.0, "steps": 0}
        self.last_eval: dict = {}
        self.stop_signal: int | None = None
        self.metrics_path = self.run_dir / "metrics.jsonl"
        # The module the loss runs through: DDP around the model when data-parallel, then the hook's wrapper
        # (DP-SGD), then torch.compile; a compile failure falls back to eager_model.
        self.eager_model = self.parallel.wrap(self.model)
        self.eager_model, self.optimizer = self.hook.wrap(self.eager_model, self.optimizer)
        self.train_model = self.eager_model
        if t.compile == "true" or (t.compile == "auto" and self.device.type == "cuda"):
            self.train_model = torch.compile(self.eager_model)
        if resume_from is not None:
            self._restore(resume_from)

    def _trainable_note(self) -> str:
        trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        return "" if trainable == self.model.num_params() else f", {trainable:,} of them trained"

    def _check_distributable(self) -> None:
        """Refuse, on every rank, what cannot run as one job over several processes."""
        t, what = self.cfg.train, None
        if t.dp_epsilon is not None:
            what = "DP-SGD (train.dp_epsilon)"
        elif self.objective.name == "tbptt":
            what = "truncated back-propagation through time (recurrent pretraining)"
        elif self.parallel.sharded and self.spec.weights.restore is not None:
            what = "LoRA with fsdp or tensor parallelism (use --train.strategy ddp)"
        if what is not None:
            raise ConfigError(f"{what} cannot run on several processes yet; run it without torchrun")

    def _fingerprint(self, resume_from: Path | None) -> dict:
        """What must be the same on every rank: the config, the data, the tokenizer, the code."""
        from lmforge.version import __version__

        run = self.cfg.to_dict()
        run["train"].pop("device", None)
        return {
            "config": run,
            "data": self.spec.data_info,
            "tokenizer": self.tokenizer.sha256(),
            "objective": self.objective.name,
            "version": __version__,
            "run_dir": str(self.run_dir.resolve()),
            "resume_from": str(resume_from),
        }

    # ---- state ---------------------------------------------------------------------------------------
    def _train_state(self, optimizer_state: dict | None) -> dict:
        return {
            "step": self.step,
            "tokens": self.tokens,
            "elapsed": self.elapsed,
            "best_val": self.best_val,
            "evals_since_best": self.evals_since_best,
            "window": dict(self.window),
            "last_eval": self.last_eval,
            "objective": self.objective.state_dict(),
            "optimizer": optimizer_state,  # None when the shards are in the checkpoint's dcp/ folder
            "scaler": self.scaler.state_dict(),
            **self.spec.weights.extra_state(self.model),
            "hook": self.hook.state_dict(),
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                "numpy": np.random.get_state(),
                "python": random.getstate(),
                "data": self.data_gen.get_state(),
            },
        }

    def _restore(self, path: Path) -> None:
        state_file = path / "train_state.pt"
        if not state_file.is_file():
            raise CheckpointError(f"{path} has no train_state.pt, so it cannot be resumed (it is an export)")
        try:
            state = torch.load(state_file, map_location="cpu", weights_only=False)
        except Exception:
            raise CheckpointError(
                f"{state_file} is truncated or corrupted; resume from an earlier checkpoint"
            ) from None
        if self.spec.check_resume is not None:
            self.spec.check_resume(ckpt.read_config(path), state)
        # The saved param groups carry the kernel choice of the run that saved them (fused on one process,
        # foreach under fsdp, neither under tensor parallelism); this run keeps its own.
        kernels = [{k: g.get(k) for k in ("fused", "foreach")} for g in self.optimizer.param_groups]
        if (path / "dcp").is_dir():  # written by an fsdp run: its shards reshard to this run's layout
            self.parallel.dcp_load(self.model, self.optimizer, path / "dcp")
        elif self.spec.weights.restore is not None:
            self.spec.weights.restore(self.model, path, state)
            self.optimizer.load_state_dict(state["optimizer"])
        else:
            model, _, _ = ckpt.load_checkpoint(path, "cpu")
            weights = ckpt.unwrap(model).state_dict()
            if self.parallel.sharded:
                self.parallel.load_full(self.model, self.optimizer, weights, state["optimizer"])
            else:
                self.model.load_state_dict(weights)
                self.optimizer.load_state_dict(
                    indexed_optimizer_state(self.model, self.optimizer, state["optimizer"])
                )
        for group, kernel in zip(self.optimizer.param_groups, kernels):
            group.update(kernel)
        self.objective.load_state_dict(state.get("objective", {}), self.device)
        self.scaler.load_state_dict(state["scaler"])
        self.step, self.tokens, self.elapsed = state["step"], state["tokens"], state["elapsed"]
        self.best_val, self.window, self.last_eval = state["best_val"], state["window"], state["last_eval"]
        self.evals_since_best = state.get("evals_since_best", 0)
        self.hook.load_state_dict(state.get("hook", {}))
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
        self.data_gen.set_state(rng["data"])
        # Drop metrics logged after this checkpoint by the interrupted run, so the file reads as one run.
        if self.parallel.main and self.metrics_path.is_file():
            lines = self.metrics_path.read_text(encoding="utf-8").splitlines()
            kept = [ln for ln in lines if ln.strip() and json.loads(ln).get("step", 0) <= self.step]
            self.metrics_path.write_text("".join(ln + "\n" for ln in kept), encoding="utf-8")

    # ---- loop ----------------------------------------------------------------------------------------
    def run(self) -> RunResult:
        """Train; a run that fails before its first checkpoint leaves nothing behind (what it created is removed)."""
        existed = set(os.listdir(self.run_dir)) if self.run_dir.is_dir() else None
        try:
            return self._run()
        except BaseException as exc:
            if isinstance(exc, OSError) and exc.filename is None and exc.errno is not None:
                exc.filename = str(self.run_dir)  # a failed write() names no file: name the run
            if self.parallel.distributed and is_peer_failure(exc):
                where = self.parallel.where
                peer = f"rank {1 - where.rank}" if where.world_size == 2 else "another rank"
                raise TrainingError(
                    f"rank {where.rank}: {peer} of the run died or did not answer within train.dist_timeout "
                    f"({self.cfg.train.dist_timeout:g} s); the last whole checkpoint stays latest: "
                    f"{ckpt.pointed(self.run_dir, 'latest') or 'none yet'}"
                ) from None
            if self.parallel.main and ckpt.pointed(self.run_dir, "latest") is None:
                if existed is None:
                    shutil.rmtree(self.run_dir, ignore_errors=True)
                elif self.run_dir.is_dir():
                    for name in set(os.listdir(self.run_dir)) - existed:
                        remove(self.run_dir / name)
            raise

    def _run(self) -> RunResult:
        cfg, t = self.cfg, self.cfg.train
        if self.parallel.main:  # one run: only rank 0 writes the run directory
            self.run_dir.mkdir(parents=True, exist_ok=True)
            ckpt.clean_stale(self.run_dir)
            cfg.save_yaml(self.run_dir / "config.yaml")
        writer = self._tensorboard() if self.parallel.main else None
        max_seconds = t.max_minutes * 60 if t.max_minutes else None
        bar = TrainProgress(t.max_steps, self.step, enabled=self.progress_enabled, max_seconds=max_seconds)
        tokens_per_step = t.batch_size * t.grad_accum * cfg.model.block_size
        bar.log(
            f"training {cfg.arch} ({self.model.num_params():,} parameters{self._trainable_note()}) on {self.device}"
            f"{self.parallel.describe()}"
            f"{' with ' + str(self.amp_dtype).replace('torch.', '') + ' autocast' if self.amp_dtype else ''}: "
            f"{tokens_per_step:,} tokens/step, {self.spec.data_size}"
        )
        note = warmup_note(cfg.optim, t.max_steps)
        if note is not None and self.step == 0:
            bar.log(f"note: {note}")
        if t.precision == "auto" and self.device.type == "cpu" and self.amp_dtype is not None:
            bar.log(
                "note: train.precision auto chose bf16 autocast (this CPU has bf16 units and the model is "
                f"{matmul_width(self.model)} wide); --train.precision fp32 turns it off"
            )
        save_every = t.save_every or t.eval_every
        stop_reason = "max_steps"
        window_time, window_tokens = 0.0, 0
        old_handlers = self._install_signal_handlers()
        try:
            while self.step < t.max_steps:
                step_start = time.perf_counter()
                step_loss = self._train_step()
                self.window["loss"] += step_loss
                self.window["steps"] += 1
                self.step += 1
                self.tokens += tokens_per_step
                dt = time.perf_counter() - step_start
                self.elapsed += dt
                window_time += dt
                window_tokens += tokens_per_step
                if self.step % t.log_every == 0 or self.step == t.max_steps:
                    loss = float(self.window["loss"]) / self.window["steps"]
                    if not math.isfinite(loss):
                        raise TrainingError(
                            f"the loss became {loss} at step {self.step}; lower --optim.lr (now {cfg.optim.lr}) "
                            "or use --train.precision fp32; no checkpoint was written for this state"
                        )
                    tps = window_tokens / max(window_time, 1e-9)
                    record = {
                        "step": self.step,
                        "tokens": self.tokens,
                        "loss": loss,
                        "lr": self.optimizer.param_groups[0]["lr"],
                        "tokens_per_s": tps,
                        "elapsed_s": self.elapsed,
                        **self.hook_metrics,
                    }
                    self._log(record, writer)
                    bar.update(self.step, loss, tps, self.elapsed, total=self._schedule_length())
                    self.window = {"loss": 0.0, "steps": 0}
                    window_time, window_tokens = 0.0, 0
                # Every rank stops at the same step and plans the schedule from the same clock.
                stopping, self.elapsed = self.parallel.agree(self.stop_signal is not None, self.elapsed)
                if stopping and self.stop_signal is None:
                    self.stop_signal = signal.SIGTERM  # another rank was stopped
                over = self._budget_exceeded(max_seconds)
                last = self.step == t.max_steps or over is not None or self.stop_signal is not None
                # A stop signal alone saves without validating first: a container's grace period is short (a
                # DP-SGD run with batches of 1,024 took > 13 s to exit when it validated), and the resumed run then
                # logs exactly the rows the uninterrupted one does.
                if self.step % t.eval_every == 0 or self.step == t.max_steps or over is not None:
                    self._evaluate(writer, bar)
                    if t.patience is not None and self.evals_since_best > t.patience:
                        over = "early_stop"
                    if self.spec.on_evaluate is not None and self.last_eval:
                        asked = self.parallel.main and self.spec.on_evaluate(self.step, dict(self.last_eval))
                        if self.parallel.broadcast(asked) and over is None:
                            over = "stopped"
                if self.step % save_every == 0 or last or over == "stopped":
                    self._save(bar)
                if self.stop_signal is not None:
                    stop_reason = "interrupted"
                    break
                if over is not None:
                    stop_reason = over
                    break
        finally:
            self._restore_signal_handlers(old_handlers)
            bar.close()
            if writer is not None:
                writer.close()
        result = RunResult(
            run_dir=self.run_dir,
            step=self.step,
            tokens=self.tokens,
            stop_reason=stop_reason,
            latest=ckpt.pointed(self.run_dir, "latest"),
            best=ckpt.pointed(self.run_dir, "best"),
            metrics={**self.last_eval, **self.hook_metrics},
            seconds=self.elapsed,
            tokens_per_s=self.tokens / max(self.elapsed, 1e-9),
        )
        if stop_reason == "interrupted":
            print(
                f"interrupted at step {self.step}: checkpoint saved to {result.latest}; "
                f"{self.spec.resume_hint.format(run=self.run_dir)}",
                flush=True,
            )
            raise KeyboardInterrupt
        return result

    def _train_step(self) -> torch.Tensor:
        t = self.cfg.train
        lr = lr_at(self.step, self.cfg.optim, self._schedule_length(), t.max_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        # Every rank draws the whole global batch and keeps its share of the rows (train/distributed.py).
        micro = [self.objective.next_batch(self.data_gen) for _ in range(t.grad_accum)]
        # Normalise by the tokens of the whole accumulated batch, not per micro-batch (transformers PR #34191).
        n_tokens = sum(self.objective.count_targets(b) for b in micro).clamp(min=1).to(self.device)
        micro = [tuple(x.to(self.device, non_blocking=True) for x in self.parallel.shard(b)) for b in micro]
        total = torch.zeros((), device=self.device)
        for i, batch in enumerate(micro):
            with self.parallel.no_sync(self.train_model, last=i == len(micro) - 1):
                with autocast(self.device, self.amp_dtype):
                    loss = self._loss_sum(batch) / n_tokens
                # DDP and FSDP average the ranks' gradients; the loss is a sum over the global batch.
                self.scaler.scale(loss * self.parallel.grad_scale).backward()
            total += loss.detach()
        if self.cfg.optim.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            self.parallel.clip_grad_norm(list(self.model.parameters()), self.cfg.optim.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.hook_metrics = self.hook.after_step(self.step + 1)
        return self.parallel.sum(total)

    def _schedule_length(self) -> int:
        """Steps the learning-rate schedule spans: train.max_steps, or, when train.max_minutes will end the run
        first, the steps that fit in it at the pace so far (training time is kept across resumes), so that a
        time-capped run still decays to its final rate instead of stopping at a high one."""
        t = self.cfg.train
        if (
            not t.max_minutes
            or self.step < max(10, warmup_for(self.cfg.optim, t.max_steps))
            or self.elapsed <= 0
        ):
            return t.max_steps
        fit = int(self.step * t.max_minutes * 60 / self.elapsed)
        return max(self.step + 1, min(t.max_steps, fit))

    def _loss_sum(self, batch) -> torch.Tensor:
        try:
            return self.objective.loss_sum(self.train_model, batch)
        except Exception as exc:
            if self.train_model is self.eager_model:
                raise
            warnings.warn(f"torch.compile failed ({type(exc).__name__}); training without it", stacklevel=2)
            self.train_model = self.eager_model
            return self.objective.loss_sum(self.eager_model, batch)

    def _budget_exceeded(self, max_seconds: float | None) -> str | None:
        if max_seconds is not None and self.elapsed >= max_seconds:
            return "max_minutes"
        if self.cfg.train.max_tokens is not None and self.tokens >= self.cfg.train.max_tokens:
            return "max_tokens"
        return None

    def _evaluate(self, writer, bar: TrainProgress) -> None:
        result = (
            None
            if self.spec.validate is None
            else self.spec.validate(self.model, self.device, self.amp_dtype)
        )
        if result is None:
            return
        if not math.isfinite(result["loss"]):
            raise TrainingError(
                f"the validation loss became {result['loss']} at step {self.step}; lower --optim.lr; "
                "no checkpoint was written for this state"
            )
        # Every scalar score becomes a val_* metric (loss, perplexity, bits_per_byte, accuracy, macro_f1, ...).
        # Every rank validated the same model on the same data; rank 0's figures decide for all of them.
        self.last_eval = self.parallel.broadcast(
            {
                f"val_{k}": v
                for k, v in result.items()
                if k not in ("tokens", "bytes") and (v is None or isinstance(v, (int, float)))
            }
        )
        key, mode = self.spec.selection
        value = self.last_eval.get(key)
        if value is not None:
            improved = (value if mode == "min" else -value) < self.best_val
            self.evals_since_best = 0 if improved else self.evals_since_best + 1
        self._log({"step": self.step, "tokens": self.tokens, **self.last_eval}, writer)
        bar.log(f"step {self.step}: {describe_scores(result)}{self.hook.describe()}")

    def _save(self, bar: TrainProgress) -> None:
        name = f"ckpt-{self.step:07d}"
        key, mode = self.spec.selection
        val = self.last_eval.get(key) if self.last_eval else None
        score = None if val is None else (val if mode == "min" else -val)
        is_best = score is not None and score < self.best_val
        if is_best:
            self.best_val = score
        config = {
            "arch": self.cfg.arch,
            "model": self.cfg.to_dict()["model"],
            "run": self.cfg.to_dict(),
            "data": self.spec.data_info,
            "step": self.step,
            "tokens": self.tokens,
            "metrics": {**self.last_eval, **self.hook_metrics},
            **self.spec.config_extras,
        }
        par, shards = self.parallel, None
        if par.sharded:  # collectives: every rank takes part, rank 0 receives the whole weights
            weights = par.full_model_state(self.model)
            if (
                par.strategy == "fsdp" and par.tp == 1
            ):  # every rank writes its own optimizer and weight shards
                shards = self.run_dir / f".tmp-dcp-{self.step:07d}"
                if par.main:
                    remove(shards)
                par.barrier()
                par.dcp_save(self.model, self.optimizer, shards)
                optimizer_state = None
            else:
                optimizer_state = par.full_optimizer_state(self.model, self.optimizer)
        else:
            weights = self.spec.weights.to_save(self.model)
            optimizer_state = self.optimizer.state_dict() if par.main else None
        if par.main:
            path = ckpt.save_checkpoint(
                self.run_dir / name,
                weights,
                self.tokenizer,
                config,
                train_state=self._train_state(optimizer_state),
                metrics_file=self.metrics_path,
                card=self._model_card(),
                overwrite=True,  # the run's own ckpt-N (a resumed run saving the step it resumed from)
                folders={"dcp": shards} if shards is not None else None,
            )
            ckpt.point(self.run_dir, "latest", path)
            if is_best or not self.last_eval:  # without validation, the latest is the best we know
                ckpt.point(self.run_dir, "best", path)
            ckpt.prune(self.run_dir, self.cfg.train.keep_last)
        par.barrier()  # no rank runs ahead of a checkpoint that is not whole yet

    def _log(self, record: dict, writer) -> None:
        if not self.parallel.main:
            return
        with open(self.metrics_path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        if writer is not None:
            for key, value in record.items():
                if key not in ("step", "tokens") and value is not None:
                    writer.add_scalar(key, value, record["step"])

    def _tensorboard(self):
        if not self.cfg.train.tensorboard:
            return None
        if not available(
            "tensorboard"
        ):  # on by default, but an extra: say so once (per process), do not fail
            warnings.warn(
                "tensorboard is not installed: this run logs to metrics.jsonl only (pip install "
                '"lmforge[tb]", or --train.tensorboard false)',
                stacklevel=2,
            )
            return None
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(
            str(self.run_dir / "tensorboard"), purge_step=self.step + 1 if self.step else None
        )

    def _model_card(self) -> str:
        m = self.cfg.model
        lines = [
            f"# {self.run_dir.name}",
            "",
            f"A {self.cfg.arch} model trained with lmforge: {self.model.num_params():,} parameters "
            f"({', '.join(f'{k} {v}' for k, v in dataclasses.asdict(m).items() if k != 'vocab_size')}), "
            f"{self.tokenizer.kind} tokenizer with {self.tokenizer.vocab_size} tokens.",
            "",
            "## Data",
            "",
            *self.spec.data_card,
        ]
        lines += ["", "## Training", "", f"- steps: {self.step:,}; tokens seen: {self.tokens:,}"]
        lines.append(f"- training time: {self.elapsed / 60:.1f} min on {self.device}")
        lines += self.hook.card()
        if self.last_eval:
            lines += ["", "## Evaluation (validation split)", "", describe_scores(self.last_eval)]
        lines += ["", "## Use", "", "```", "lmforge " + self.spec.usage.format(run=self.run_dir), "```", ""]
        return "\n".join(lines)

    # ---- signals -------------------------------------------------------------------------------------
    def _install_signal_handlers(self):
        if threading.current_thread() is not threading.main_thread():
            return None

        def handler(signum, frame):
            if self.stop_signal is not None:  # a second Ctrl-C stops at once
                raise KeyboardInterrupt
            self.stop_signal = signum

        return {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}

    @staticmethod
    def _restore_signal_handlers(old) -> None:
        if old:
            for sig, h in old.items():
                signal.signal(sig, h)
