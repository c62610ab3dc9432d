"""Pruning a checkpoint into a new, ordinary checkpoint.

Methods:
  magnitude   unstructured: the smallest-|w| entries of the Linear weights become zero (torch.nn.utils.prune,
              global across layers by default or the same fraction in every layer), made permanent, so the
              checkpoint has the usual weight names and the zeros are in the weights. The file does not shrink:
              dense safetensors store zeros like any other value; sparsity is reported.
  structured  GPT only: whole attention heads and MLP hidden neurons are removed and the matrices rebuilt
              smaller, the same number in every layer so the config keeps one `n_head` and one `mlp_hidden`.
              Heads keep their size, so the config gets `head_dim` (n_embd no longer equals n_head x head_dim).
              With grouped-query attention a key/value head goes together with the query heads that read it.

Output layers (a GPT's `lm_head`, often tied to the embedding; a classifier's `head`) are never pruned.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune as torch_prune

from lmforge.checkpoint import read_config, resolve_checkpoint, save_checkpoint
from lmforge.compress.quantize import describe as describe_size_speed
from lmforge.config import build_run_config
from lmforge.data.shards import TokenShards, load_prepared
from lmforge.errors import ConfigError, DataError, TokenizerError
from lmforge.eval.perplexity import text_windows
from lmforge.extras import require
from lmforge.lm import load
from lmforge.models.gpt import GPT, GPTConfig
from lmforge.models.registry import is_statistical
from lmforge.outputs import check_output, staged
from lmforge.tasks.lm.run import pretrain_spec
from lmforge.train.trainer import Trainer

METHODS = ("magnitude", "structured")
SCORES = ("auto", "l2", "taylor")  # auto: taylor when there is data to take gradients on, else l2
OUTPUT_LAYERS = ("lm_head", "head")
CALIBRATION_BATCHES = 4


def check_amount(amount: float) -> None:
    if not 0 <= amount < 1:
        raise ConfigError(f"--amount must be in [0, 1), got {amount}")


def prunable_layers(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and name.rsplit(".", 1)[-1] not in OUTPUT_LAYERS
    ]


def sparsity(model: nn.Module) -> dict:
    """Zeros among the prunable Linear weights, and among all parameters (tied ones counted once)."""
    weights = [m.weight for _, m in prunable_layers(model)]
    zeros = sum(int((w == 0).sum()) for w in weights)
    total = sum(w.numel() for w in weights)
    params = list(model.parameters())
    return {
        "linear_sparsity": zeros / max(total, 1),
        "linear_weights": total,
        "model_sparsity": sum(int((p == 0).sum()) for p in params) / sum(p.numel() for p in params),
    }


# ---- unstructured ----------------------------------------------------------------------------------------


def magnitude_prune(model: nn.Module, amount: float, per_layer: bool = False) -> dict:
    """Zero the `amount` fraction of smallest-magnitude Linear weights, in place; returns the pruning record."""
    check_amount(amount)
    layers = prunable_layers(model)
    if not layers:
        raise ConfigError("the model has no Linear layers to prune")
    if per_layer:
        for _, m in layers:
            torch_prune.l1_unstructured(m, "weight", amount)
    else:
        # Global: one threshold over all layers, so layers with many small weights give up more of them.
        torch_prune.global_unstructured(
            [(m, "weight") for _, m in layers], torch_prune.L1Unstructured, amount=amount
        )
    for _, m in layers:
        torch_prune.remove(m, "weight")  # the mask is folded into `weight`; no weight_orig / hooks remain
    return {
        "method": "magnitude",
        "amount": amount,
        "scope": "per-layer" if per_layer else "global",
        "layers": [name for name, _ in layers],
    }


# ---- structured ------------------------------------------------------------------------------------------


def calibration_batches(lm, data: str | os.PathLike, n: int = CALIBRATION_BATCHES) -> list:
    """A few (inputs, targets) batches of `data` (a prepared data directory or a text file) for gradients."""
    block, path = lm.model.config.block_size, Path(data)
    if path.is_dir():
        shards = TokenShards(path, "train")
        if shards.manifest["tokenizer"]["sha256"] != lm.tokenizer.sha256():
            raise TokenizerError(f"{data} was tokenized with a different tokenizer than the model's")
        windows = shards.windows(block, 8, None)
    elif path.is_file():
        windows = text_windows(lm.tokenizer.encode(path.read_text(encoding="utf-8")), block, 8)
    else:
        raise DataError(f"{data} does not exist; give a prepared data directory or a UTF-8 text file")
    batches = [b for _, b in zip(range(n), windows)]
    if not batches:
        raise DataError(f"{data} has too little text to score the weights")
    return batches


def weight_saliency(model: nn.Module, batches: list | None) -> dict[str, torch.Tensor]:
    """Per-entry importance of every parameter: w^2 (an L2 norm once summed), or with data the first-order
    Taylor estimate |w * dL/dw| summed over the batches (the loss change if that entry were zeroed)."""
    if batches is None:
        return {name: p.detach() ** 2 for name, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    saliency = {name: torch.zeros_like(p) for name, p in model.named_parameters()}
    for x, y in batches:
        logits = model(x)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1), ignore_index=-100)
        grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
        for (name, p), g in zip(model.named_parameters(), grads):
            if g is not None:
                saliency[name] += (p.detach() * g).abs()
    return saliency


def _keep(scores: torch.Tensor, amount: float) -> torch.Tensor:
    """Sorted indices of the units to keep: all but the round(amount * n) lowest-scoring, at least one."""
    n = scores.numel()
    n_keep = max(n - round(amount * n), 1)
    return scores.topk(n_keep).indices.sort().values


def structured_prune(model: nn.Module, amount: float, batches: list | None = None, invert: bool = False):
    """A new, smaller GPT without the `amount` least important head groups and MLP neurons of every layer.

    Returns (model, pruning record). `invert` removes the most important ones instead (to show the score matters).
    """
    check_amount(amount)
    if not isinstance(model, GPT):
        raise ConfigError(
            "structured pruning rebuilds GPT decoders only; use --method magnitude for this model"
        )
    cfg = model.config
    hd, kv, group = cfg.head_size, cfg.kv_heads, cfg.n_head // cfg.kv_heads
    sal = weight_saliency(model, batches)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    kept_groups, kept_neurons = None, None
    for i in range(cfg.n_layer):
        p = f"blocks.{i}."
        # A group is one key/value head and the `group` query heads that read it (query head h uses kv h // group).
        qkv, o = sal[p + "attn.qkv_proj.weight"].sum(1), sal[p + "attn.o_proj.weight"].sum(0)
        if p + "attn.qkv_proj.bias" in sal:
            qkv = qkv + sal[p + "attn.qkv_proj.bias"]
        q = (qkv[: cfg.n_head * hd] + o).view(kv, group * hd).sum(1)
        k = qkv[cfg.n_head * hd : (cfg.n_head + kv) * hd].view(kv, hd).sum(1)
        v = qkv[(cfg.n_head + kv) * hd :].view(kv, hd).sum(1)
        groups = _keep(-(q + k + v) if invert else q + k + v, amount)
        q_rows = torch.cat([torch.arange(g * group * hd, (g + 1) * group * hd) for g in groups.tolist()])
        kv_rows = torch.cat([torch.arange(g * hd, (g + 1) * hd) for g in groups.tolist()])
        rows = torch.cat([q_rows, cfg.n_head * hd + kv_rows, (cfg.n_head + kv) * hd + kv_rows])
        state[p + "attn.qkv_proj.weight"] = state[p + "attn.qkv_proj.weight"][rows]
        if p + "attn.qkv_proj.bias" in state:
            state[p + "attn.qkv_proj.bias"] = state[p + "attn.qkv_proj.bias"][rows]
        state[p + "attn.o_proj.weight"] = state[p + "attn.o_proj.weight"][:, q_rows]

        mlp_in = [n for n in ("mlp.up_proj", "mlp.gate_proj") if p + n + ".weight" in state]
        neuron = sal[p + "mlp.down_proj.weight"].sum(0)
        for n in mlp_in:
            neuron = (
                neuron
                + sal[p + n + ".weight"].sum(1)
                + (sal[p + n + ".bias"] if p + n + ".bias" in sal else 0)
            )
        neurons = _keep(-neuron if invert else neuron, amount)
        for n in mlp_in:
            state[p + n + ".weight"] = state[p + n + ".weight"][neurons]
            if p + n + ".bias" in state:
                state[p + n + ".bias"] = state[p + n + ".bias"][neurons]
        state[p + "mlp.down_proj.weight"] = state[p + "mlp.down_proj.weight"][:, neurons]
        kept_groups, kept_neurons = len(groups), len(neurons)

    fields = {f: getattr(cfg, f) for f in cfg.__dataclass_fields__}
    fields.update(
        n_head=kept_groups * group,
        head_dim=hd,
        mlp_hidden=kept_neurons,
        n_kv_head=kept_groups if cfg.n_kv_head is not None else None,
    )
    small = GPT(GPTConfig(**fields))
    small.load_state_dict(state)
    record = {
        "method": "structured",
        "amount": amount,
        "score": "taylor" if batches else "l2",
        "heads": [cfg.n_head, small.config.n_head],
        "kv_heads": [kv, small.config.kv_heads],
        "mlp_hidden": [cfg.hidden, kept_neurons],
    }
    return small.eval(), record


# ---- recovery fine-tune ----------------------------------------------------------------------------------


def recover(
    model: nn.Module, tokenizer, config: dict, data: str | os.PathLike, steps: int, seed: int | None = None
) -> nn.Module:
    """A short fine-tune of a pruned model on a prepared data directory, by the one training loop.

    Zero weights stay zero: each Linear weight trains behind its pruning mask (torch.nn.utils.prune's
    reparametrization), folded back in at the end. The run's own optimizer settings apply, with a cosine decay
    over `steps`; its checkpoints go to a temporary folder (they carry the `_orig`/`_mask` names) and are dropped.
    """
    if steps < 1:
        raise ConfigError(f"--recover-steps must be >= 1, got {steps}")
    if not Path(data).is_dir():
        raise DataError(
            "--recover-steps trains on a prepared data directory (lmforge prepare); --data is not one"
        )
    _, data_tokenizer = load_prepared(Path(data))
    if data_tokenizer.sha256() != tokenizer.sha256():
        raise TokenizerError(f"{data} was tokenized with a different tokenizer than the model's")
    run = config.get("run") or {}
    train = {
        k: v
        for k, v in (run.get("train") or {}).items()
        if k in ("batch_size", "grad_accum", "seed", "threads")
    }
    if seed is not None:  # else the run's own
        train["seed"] = seed
    base = {"arch": config["arch"], "model": config["model"], "optim": run.get("optim") or {}, "train": train}
    cfg = build_run_config(
        base=base,
        overrides={
            "train.max_steps": steps,
            "train.eval_every": steps,
            "train.tensorboard": False,
            "train.keep_last": 1,
            "optim.warmup_steps": min(steps // 10, (run.get("optim") or {}).get("warmup_steps", 100)),
        },
    )
    layers = prunable_layers(model)
    for _, m in layers:
        torch_prune.custom_from_mask(m, "weight", m.weight.detach() != 0)

    spec = dataclasses.replace(pretrain_spec(cfg, data), build_model=lambda: model)
    with tempfile.TemporaryDirectory() as tmp:
        Trainer(cfg, spec, Path(tmp) / "run", progress=False).run()
    for _, m in layers:
        torch_prune.remove(m, "weight")
    return model.cpu().eval()


# ---- checkpoints -----------------------------------------------------------------------------------------


def prune_checkpoint(
    ckpt: str | os.PathLike,
    out: str | os.PathLike,
    method: str,
    amount: float,
    per_layer: bool = False,
    data: str | os.PathLike | None = None,
    score: str = "auto",
    recover_steps: int = 0,
    overwrite: bool = False,
    seed: int | None = None,
) -> Path:
    """Prune a checkpoint and save the result as a new checkpoint folder that `lmforge.load` reads back. An existing
    `out` is replaced only with overwrite=True, and never one that holds `ckpt` or `data` (lmforge.outputs)."""
    if method not in METHODS:
        raise ConfigError(f"unknown pruning method {method!r}; choose one of {', '.join(METHODS)}")
    check_amount(amount)
    if score not in SCORES:
        raise ConfigError(f"unknown importance score {score!r}; choose one of {', '.join(SCORES)}")
    if score == "taylor" and data is None:
        raise ConfigError(
            "--score taylor needs --data (a text file or a prepared data directory) for gradients"
        )
    src = resolve_checkpoint(ckpt)
    config = read_config(src)
    if config.get("arch") and is_statistical(config["arch"]):
        raise ConfigError(
            f"{ckpt} is an n-gram model (count tables, no weights to prune); prune a neural checkpoint"
        )
    if config.get("quantization"):
        raise ConfigError(
            f"{ckpt} is quantized ({config['quantization']['method']}); prune the float checkpoint"
        )
    check_output(out, overwrite=overwrite, inputs=[src, data])
    if method == "structured" and config.get("arch") != "gpt":
        raise ConfigError(
            f"structured pruning rebuilds GPT decoders only, {ckpt} is a {config.get('arch')} model"
        )
    lm = load(src, device="cpu")
    model = lm.model.eval()
    if method == "magnitude":
        with torch.no_grad():
            record = magnitude_prune(model, amount, per_layer)
    else:
        taylor = score == "taylor" or (score == "auto" and data is not None)
        batches = calibration_batches(lm, data) if taylor else None
        model, record = structured_prune(model, amount, batches)
        config["model"] = dataclasses.asdict(model.config)
        if isinstance(config.get("run"), dict):
            config["run"] = {**config["run"], "model": config["model"]}
    if recover_steps:
        if data is None:
            raise ConfigError("--recover-steps needs --data DIR, a prepared data directory to train on")
        model = recover(model, lm.tokenizer, config, data, recover_steps, seed)
        record["recover_steps"] = recover_steps
    record.update(sparsity(model))
    # The source's validation metrics describe the unpruned weights; `lmforge info` must not show them as ours.
    config = {k: v for k, v in config.items() if k not in ("lmforge_version", "tokenizer", "metrics")}
    config["pruning"] = record
    config["pruned_from"] = str(src)
    return save_checkpoint(out, model, lm.tokenizer, config, overwrite=overwrite, inputs=(src, data))


# ---- original vs pruned ----------------------------------------------------------------------------------


def describe(ckpt: str | os.PathLike, data: str | os.PathLike | None) -> dict:
    """quantize.describe's size / tokens/s / perplexity, plus parameters and sparsity."""
    out = describe_size_speed(ckpt, data)
    model = load(out["path"], device="cpu").model
    out["parameters"] = model.num_params()
    out.update(sparsity(model))
    return out


def sweep(
    ckpt,
    out_dir,
    method: str,
    amounts: list[float],
    per_layer: bool,
    data,
    score: str = "auto",
    recover_steps: int = 0,
    overwrite: bool = False,
    plot_file: str | None = None,
) -> list[dict]:
    """Prune at each amount into out_dir/amount-X and describe each result (the original first, as amount 0); with
    `plot_file`, also plot them into out_dir/plot_file. out_dir appears whole at the end (lmforge.outputs.staged)
    and replaces an existing one only with overwrite=True."""
    out_dir = check_output(out_dir, overwrite=overwrite, inputs=[ckpt, data])
    rows = [{"amount": 0.0, **describe(ckpt, data)}]
    with staged(out_dir) as tmp:
        for amount in amounts:
            path = prune_checkpoint(
                ckpt, tmp / f"amount-{amount:g}", method, amount, per_layer, data, score, recover_steps
            )
            rows.append({"amount": amount, **describe(path, data), "path": str(out_dir / path.name)})
        if plot_file is not None:
            plot(rows, method, tmp / plot_file)
    return rows


def plot(rows: list[dict], method: str, path: str | os.PathLike) -> Path:
    """Perplexity against sparsity (magnitude) or size on disk (structured), as a PNG."""
    matplotlib = require("matplotlib", extra="tasks", feature="the pruning plot")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x_key, label = (
        ("linear_sparsity", "sparsity of the Linear weights")
        if method == "magnitude"
        else ("size_bytes", "size on disk (bytes)")
    )
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([r[x_key] for r in rows], [r["perplexity"] for r in rows], marker="o")
    for r in rows:
        ax.annotate(
            f"{r['amount']:g}", (r[x_key], r["perplexity"]), textcoords="offset points", xytext=(4, 4)
        )
    ax.set_xlabel(label)
    ax.set_ylabel("perplexity")
    ax.set_title(f"{method} pruning")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
