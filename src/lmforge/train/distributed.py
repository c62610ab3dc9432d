"""One training run on several processes (torchrun): the process group, how the model is spread over the ranks
(DDP, FSDP2, tensor parallelism for the GPT decoder), which rows of each batch a rank trains on, and how the
ranks agree on losses, stops and checkpoints.

The trainer (train/trainer.py) asks a `Parallel` for each of these; without torchrun the `Parallel` is the single
process and every answer is the identity, so the one loop is the same code at every world size.

The rule that keeps a config meaning the same thing at any world size: `train.batch_size` is the global batch of a
micro-step. Every rank draws the *whole* global batch from the same seeded generator (drawing is cheap next to
the step) and keeps its contiguous share of the rows (`shard`), so the union of the shares is the batch one process
would draw. The loss is normalised by the target count of the whole global batch and the gradient is summed over
the data-parallel ranks, so 2 ranks compute the single-process gradient up to float reduction order.

Tensor parallelism splits each attention's heads and each MLP's hidden units over the ranks of the "tp" mesh
dimension (torch.distributed.tensor.parallel, Megatron's column-then-row split). Our attention keeps q, k and v in
one fused matrix, whose column shards would mix heads of q with k; the rows of that matrix are therefore put in
rank order ([q, k, v] of rank 0's heads, then rank 1's) before sharding, and put back whenever weights leave the
run (`full_model_state`) or enter it (`load_full`), so checkpoints keep the single-process layout.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from lmforge.errors import ConfigError, TrainingError


@dataclass(frozen=True)
class Launch:
    """Where torchrun (or any launcher that sets the same variables) put this process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def launch() -> Launch:
    """This process's place from RANK / WORLD_SIZE / LOCAL_RANK (one process when they are absent)."""
    try:
        return Launch(
            rank=int(os.environ.get("RANK", "0")),
            world_size=int(os.environ.get("WORLD_SIZE", "1")),
            local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        )
    except ValueError:
        raise ConfigError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (set by torchrun)") from None


def refuse_distributed(what: str) -> None:
    """Refuse, on every rank, work that does not go through the training loop (a one-pass fit) under torchrun:
    it would run as identical copies writing the same files."""
    where = launch()
    if where.distributed:
        raise ConfigError(
            f"{what} is fitted in one pass, not by the training loop, and cannot run on several processes "
            f"(WORLD_SIZE={where.world_size}); run it without torchrun"
        )


def _device_for(where: Launch, name: str) -> torch.device:
    """One GPU per local rank on CUDA; the CPU otherwise."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", where.local_rank % max(1, torch.cuda.device_count()))
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise ConfigError(f"distributed training runs on CPU (gloo) or CUDA (nccl), not on {device.type}")
    return device


def training_state_bytes(model: nn.Module) -> int:
    """Parameters, gradients and AdamW's two moments in fp32: 16 bytes a trainable parameter (4 for a frozen one)."""
    return sum(p.numel() * (16 if p.requires_grad else 4) for p in model.parameters())


# `strategy auto` shards (FSDP) once one replica's training state would take more than this share of a device's
# memory: below it DDP's single all-reduce per step is cheaper than FSDP's gathers; above it activations and
# fragmentation leave too little room for a full replica.
FSDP_SHARE = 0.25


class Parallel:
    """How this process takes part in the run. `Parallel.single()` is one process; `Parallel.join(...)` joins the
    process group torchrun set up."""

    def __init__(self, where: Launch, strategy: str, tensor_parallel: int, device: torch.device):
        self.where, self.strategy, self.tp, self.device = where, strategy, tensor_parallel, device
        self.dp = where.world_size // tensor_parallel
        self.dp_rank = where.rank // tensor_parallel
        self.mesh = None
        self.qkv_orders: dict[
            str, torch.Tensor
        ] = {}  # fqn of each fused qkv weight/bias -> its rank-order rows

    @classmethod
    def single(cls, device: torch.device) -> Parallel:
        return cls(Launch(), "none", 1, device)

    @classmethod
    def join(cls, strategy: str, tensor_parallel: int, device_name: str, timeout: float) -> Parallel:
        """Join the process group (gloo on CPU, nccl on CUDA) when launched on several processes."""
        where = launch()
        if not where.distributed:
            if tensor_parallel > 1:
                raise ConfigError(
                    f"train.tensor_parallel {tensor_parallel} needs as many processes: launch with torchrun "
                    f"--nproc_per_node {tensor_parallel}"
                )
            from lmforge.device import pick_device

            return cls.single(pick_device(device_name))
        import torch.distributed as dist

        if where.world_size % tensor_parallel:
            raise ConfigError(
                f"train.tensor_parallel {tensor_parallel} does not divide the {where.world_size} processes"
            )
        device = _device_for(where, device_name)
        if not dist.is_initialized():
            dist.init_process_group(
                "nccl" if device.type == "cuda" else "gloo",
                timeout=datetime.timedelta(seconds=timeout),
                device_id=device if device.type == "cuda" else None,
            )
        if dist.get_world_size() != where.world_size:
            raise ConfigError(
                f"the process group has {dist.get_world_size()} processes but WORLD_SIZE={where.world_size}"
            )
        par = cls(where, strategy, tensor_parallel, device)
        if tensor_parallel > 1:
            from torch.distributed.device_mesh import init_device_mesh

            par.mesh = init_device_mesh(device.type, (par.dp, tensor_parallel), mesh_dim_names=("dp", "tp"))
        return par

    # ---- who does what -----------------------------------------------------------------------------
    @property
    def distributed(self) -> bool:
        return self.where.distributed

    @property
    def main(self) -> bool:
        return self.where.main

    @property
    def sharded(self) -> bool:
        """Parameters are DTensors (FSDP or tensor parallel): weights must be gathered to be saved."""
        return self.strategy == "fsdp" or self.tp > 1

    def describe(self) -> str:
        if not self.distributed:
            return ""
        parts = [f"{self.where.world_size} processes"]
        if self.tp > 1:
            parts.append(f"tensor parallel over {self.tp}")
        if self.dp > 1:
            parts.append(f"{self.strategy} over {self.dp}")
        return " (" + ", ".join(parts) + ")"

    def resolve_strategy(self, model: nn.Module, device_memory: int | None) -> None:
        """Settle `auto` for this model and the memory of one device, before the model is spread."""
        if not self.distributed:
            return
        if self.strategy == "auto":
            big = device_memory is not None and training_state_bytes(model) > FSDP_SHARE * device_memory
            self.strategy = "fsdp" if big or self.tp > 1 and self.dp > 1 else "ddp"
        if self.tp > 1 and self.dp > 1 and self.strategy == "ddp":
            raise ConfigError(
                "tensor parallelism combines with fsdp, not ddp, over the data-parallel ranks: "
                "use --train.strategy fsdp (or auto)"
            )

    def check_batch(self, batch_size: int) -> None:
        if self.dp > 1 and batch_size % self.dp:
            raise ConfigError(
                f"train.batch_size {batch_size} is the global batch and must divide evenly over the {self.dp} "
                f"data-parallel processes; use a multiple of {self.dp}"
            )

    def check_same(self, fingerprint: dict) -> None:
        """Refuse a run whose ranks were given different data, configs or code (one line, on every rank)."""
        if not self.distributed:
            return
        import torch.distributed as dist

        digest = hashlib.sha256(json.dumps(fingerprint, sort_keys=True, default=str).encode()).hexdigest()
        everyone: list = [None] * self.where.world_size
        dist.all_gather_object(everyone, (digest, fingerprint))
        for rank, (other, theirs) in enumerate(everyone):
            if other != digest:
                diff = sorted(
                    k for k in set(fingerprint) | set(theirs) if fingerprint.get(k) != theirs.get(k)
                )
                raise ConfigError(
                    f"rank {rank} was started differently from rank {self.where.rank} ({', '.join(diff)} "
                    "differ): every process must run the same command, code and data"
                )

    # ---- the model ---------------------------------------------------------------------------------
    def spread(self, model: nn.Module) -> nn.Module:
        """Tensor-parallel split and FSDP sharding, in place, before the optimizer is built."""
        if self.tp > 1:
            self._tensor_parallel(model)
        if self.distributed and self.strategy == "fsdp":
            from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

            mesh = self.mesh["dp"] if self.mesh is not None else None
            policy = MixedPrecisionPolicy()
            if self.device.type == "cuda" and torch.cuda.is_bf16_supported():
                policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
            # One FSDP unit per repeated block (the members of every ModuleList: GPT blocks, BERT layers, encoder
            # and decoder layers), gathered only while it computes, and one for the rest at the root.
            blocks = [b for m in model.modules() if isinstance(m, nn.ModuleList) for b in m]
            for block in blocks:
                fully_shard(block, mesh=mesh, mp_policy=policy)
            fully_shard(model, mesh=mesh, mp_policy=policy)
        return model

    def _tensor_parallel(self, model: nn.Module) -> None:
        from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

        from lmforge.models.gpt import GPT

        if not isinstance(model, GPT):
            raise ConfigError(
                "train.tensor_parallel splits the GPT decoder only; use ddp or fsdp for this model"
            )
        cfg, tp = model.config, self.tp
        for name, value in (("n_head", cfg.n_head), ("n_kv_head", cfg.n_kv_head or cfg.n_head)):
            if value % tp:
                raise ConfigError(f"model.{name} {value} must divide by train.tensor_parallel {tp}")
        if cfg.hidden % tp:
            raise ConfigError(f"the MLP width {cfg.hidden} must divide by train.tensor_parallel {tp}")
        mesh = self.mesh["tp"]
        for i, block in enumerate(model.blocks):
            attn = block.attn
            order = qkv_rank_order(attn.n_head, attn.n_kv_head, attn.head_dim, tp)
            for pname, param in attn.qkv_proj.named_parameters():
                self.qkv_orders[f"blocks.{i}.attn.qkv_proj.{pname}"] = order
                param.data = param.data[order].contiguous()
            plan = {"attn.qkv_proj": ColwiseParallel(), "attn.o_proj": RowwiseParallel()}
            plan["mlp.up_proj"] = ColwiseParallel()
            if hasattr(block.mlp, "gate_proj"):
                plan["mlp.gate_proj"] = ColwiseParallel()
            plan["mlp.down_proj"] = RowwiseParallel()
            parallelize_module(block, mesh, plan)
            attn.n_head, attn.n_kv_head = attn.n_head // tp, attn.n_kv_head // tp  # this rank's heads

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module the loss runs through: DDP around the model when data-parallel without sharding."""
        if self.distributed and self.strategy == "ddp" and self.tp == 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            # static_graph: the same parameters take part in every step, and some never do (a BERT classifier's
            # unused MLM head): DDP learns which in the first step instead of searching the graph every step.
            return DistributedDataParallel(model, device_ids=ids, static_graph=True)
        return model

    def no_sync(self, train_model: nn.Module, last: bool):
        """No gradient communication on the micro-batches before the last one of an accumulated step."""
        if not self.distributed or self.dp == 1:
            return contextlib.nullcontext()
        if hasattr(train_model, "no_sync"):  # DDP
            return contextlib.nullcontext() if last else train_model.no_sync()
        if hasattr(train_model, "set_requires_gradient_sync"):  # FSDP2
            train_model.set_requires_gradient_sync(last)
        return contextlib.nullcontext()

    # ---- the data ----------------------------------------------------------------------------------
    def shard(self, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """This rank's contiguous share of the rows of a global batch (every tensor's first dimension)."""
        if self.dp == 1:
            return batch
        return tuple(t.tensor_split(self.dp)[self.dp_rank] for t in batch)

    @property
    def grad_scale(self) -> int:
        """DDP and FSDP average gradients over the data-parallel ranks; the loss is a sum, so scale back."""
        return self.dp

    # ---- agreeing ----------------------------------------------------------------------------------
    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """The sum over the data-parallel ranks of a per-rank scalar (the loss of each rank's share)."""
        if self.dp == 1:
            return value
        import torch.distributed as dist

        total = value.detach().clone()
        group = self.mesh.get_group("dp") if self.mesh is not None else None
        dist.all_reduce(total, group=group)
        return total

    def agree(self, stop: bool, elapsed: float) -> tuple[bool, float]:
        """Every rank stops at the same step (a signal or a budget seen by any) and plans its learning-rate
        schedule from the same clock (the slowest rank's)."""
        if not self.distributed:
            return stop, elapsed
        import torch.distributed as dist

        flags = torch.tensor([float(stop), elapsed], dtype=torch.float64, device=self.device)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        return bool(flags[0].item()), float(flags[1].item())

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    def broadcast(self, value):
        """Rank 0's value of a picklable object, on every rank."""
        if not self.distributed:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def clip_grad_norm(self, params: list[nn.Parameter], max_norm: float) -> torch.Tensor:
        """torch's clip_grad_norm_, for parameters that mix DTensors (tensor-parallel shards) and plain tensors
        (replicated norms and embeddings), which it refuses to combine."""
        grads = [p.grad for p in params if p.grad is not None]
        if not self.sharded:
            return torch.nn.utils.clip_grad_norm_(params, max_norm)
        from torch.distributed.tensor import DTensor

        total = torch.zeros((), dtype=torch.float32, device=self.device)
        for g in grads:
            norm = g.float().norm() ** 2
            total += norm.full_tensor() if isinstance(norm, DTensor) else norm
        total = total.sqrt()
        coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
        for g in grads:
            g.mul_(coef)
        return total

    def close(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()

    # ---- checkpoints -------------------------------------------------------------------------------
    def full_model_state(self, model: nn.Module) -> dict[str, torch.Tensor] | None:
        """The whole model's weights in the single-process layout, on the CPU of rank 0 (None on other ranks);
        a collective: every rank must call it. Tied weights appear once, under their first name."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if not self.main:
            return None
        for fqn, order in self.qkv_orders.items():
            state[fqn] = state[fqn][torch.argsort(order)]
        seen, aliases = set(), set()
        for name, param in model.named_parameters(remove_duplicate=False):
            if id(param) in seen:
                aliases.add(name)
            seen.add(id(param))
        return {k: v.contiguous() for k, v in state.items() if k not in aliases}

    def full_optimizer_state(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict | None:
        """The optimizer state keyed by parameter name, gathered whole on rank 0 (None elsewhere); collective."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        state = get_optimizer_state_dict(
            model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
        if not self.main:
            return None
        self._reorder(state, inverse=True)
        return state

    def _reorder(self, optim_state: dict, inverse: bool) -> None:
        for fqn, order in self.qkv_orders.items():
            rows = torch.argsort(order) if inverse else order
            for key, value in optim_state.get("state", {}).get(fqn, {}).items():
                if isinstance(value, torch.Tensor) and value.dim() and value.shape[0] == order.numel():
                    optim_state["state"][fqn][key] = value[rows]

    def load_full(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, weights: dict, optim_state: dict | None
    ) -> None:
        """Load single-process weights and a name-keyed (or plain) optimizer state into the spread model."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        weights = dict(weights)
        for fqn, order in self.qkv_orders.items():
            weights[fqn] = weights[fqn][order]
        options = StateDictOptions(full_state_dict=True, strict=False)
        set_model_state_dict(model, weights, options=options)
        if optim_state is not None:
            optim_state = named_optimizer_state(model, optimizer, optim_state)
            self._reorder(optim_state, inverse=False)
            set_optimizer_state_dict(model, optimizer, optim_state, options=options)

    def dcp_save(self, model: nn.Module, optimizer: torch.optim.Optimizer, folder) -> None:
        """Every rank writes its own shards of the weights and optimizer state (torch.distributed.checkpoint)."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        weights, optim = get_state_dict(model, optimizer)
        dcp.save({"model": weights, "optim": optim}, checkpoint_id=str(folder))

    def dcp_load(self, model: nn.Module, optimizer: torch.optim.Optimizer, folder) -> None:
        """Read DCP shards written at any world size into this run's layout (resharded by DCP)."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        if self.tp > 1:
            raise TrainingError(
                "a tensor-parallel run cannot resume from a sharded (fsdp) checkpoint yet; resume it with "
                "--train.strategy fsdp and --train.tensor_parallel 1"
            )
        weights, optim = get_state_dict(model, optimizer)
        state = {"model": weights, "optim": optim}
        with (
            warnings.catch_warnings()
        ):  # one process reading shards is intended: DCP warns that it assumes so
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.load(state, checkpoint_id=str(folder))
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])


def qkv_rank_order(n_head: int, n_kv_head: int, head_dim: int, tp: int) -> torch.Tensor:
    """Row order of a fused [q | k | v] projection that puts each tensor-parallel rank's heads together:
    [q, k, v of rank 0's heads, q, k, v of rank 1's, ...]; contiguous row shards then hold whole heads."""
    q = torch.arange(n_head * head_dim).view(tp, -1)
    k = n_head * head_dim + torch.arange(n_kv_head * head_dim).view(tp, -1)
    v = (n_head + n_kv_head) * head_dim + torch.arange(n_kv_head * head_dim).view(tp, -1)
    return torch.cat([torch.cat([q[r], k[r], v[r]]) for r in range(tp)])


def named_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> dict:
    """An optimizer state dict keyed by parameter name (torch.distributed.checkpoint's form) from either form:
    a plain `optimizer.state_dict()` numbers the parameters in the order of the optimizer's groups, which is the
    same order for a model built the same way at any world size."""
    groups = state.get("param_groups", [])
    if not groups or all(isinstance(p, str) for g in groups for p in g["params"]):
        return state
    names = {id(p): n for n, p in model.named_parameters()}
    index_to_name = {}
    for saved, live in zip(groups, optimizer.param_groups):
        for index, param in zip(saved["params"], live["params"]):
            index_to_name[index] = names[id(param)]
    return {
        "state": {index_to_name[i]: s for i, s in state["state"].items()},
        "param_groups": [{**g, "params": [index_to_name[i] for i in g["params"]]} for g in groups],
    }


def indexed_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> dict:
    """The plain `optimizer.state_dict()` form (parameters numbered in group order) of either form."""
    groups = state.get("param_groups", [])
    if not any(isinstance(p, str) for g in groups for p in g["params"]):
        return state
    names = {id(p): n for n, p in model.named_parameters()}
    name_to_index, index = {}, 0
    for live in optimizer.param_groups:
        for param in live["params"]:
            name_to_index[names[id(param)]] = index
            index += 1
    return {
        "state": {name_to_index[n]: s for n, s in state["state"].items()},
        "param_groups": [{**g, "params": [name_to_index[n] for n in g["params"]]} for g in groups],
    }
