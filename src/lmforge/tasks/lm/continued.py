"""Continued pretraining: where a new run's starting weights come from (any checkpoint: a run, an import, an
export, a pruned one), and the rule that a run started from a checkpoint (--init-from) or continuing its own
(--resume) keeps its saved model: flags that repeat the saved values are accepted, a real change is refused in
one line naming the key, the saved value and the new one.

    origin = load_origin("gpt2-imported")            # weights, tokenizer fingerprint, what the card says
    cfg = init_config(origin, config_file, arch, preset, overrides)   # the checkpoint's model + training flags
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lmforge import checkpoint as ckpt
from lmforge.config import RunConfig, build_run_config, load_yaml
from lmforge.errors import CheckpointError, ConfigError
from lmforge.models.registry import build_model, is_statistical
from lmforge.train.trainer import TrainHook

# Model config keys that change how a model trains, not its weights: a continued run may set them.
TRAINING_KEYS = (
    "dropout",
    "mask_prob",
    "whole_word_mask",
    "label_smoothing",
    "noise_density",
    "mean_span_length",
)
# Architectures that are fine-tuned task models (a head on a backbone), not language models to pretrain further.
TASK_ARCHS = ("classifier", "tagger", "span_qa", "tfidf")


@dataclass
class Origin:
    """The checkpoint a continued-pretraining run starts from: its record (kept in every checkpoint's config as
    "init_from" and shown on the model card) and, for a new run, its weights."""

    path: Path
    config: dict  # the checkpoint's config.json
    # None when resuming: the run's own checkpoint has the weights
    state: dict[str, torch.Tensor] | None = None
    recorded: dict | None = None  # a resumed run's record, as its checkpoints keep it

    @classmethod
    def resumed(cls, record: dict) -> Origin:
        """The origin of a run being resumed, from the record its checkpoints keep."""
        return cls(Path(record["path"]), {"arch": record["arch"]}, recorded=record)

    @property
    def tokenizer_sha256(self) -> str | None:
        return (self.config.get("tokenizer") or {}).get("sha256")

    def record(self) -> dict:
        """What the run's checkpoints say about where they started ("init_from" in config.json)."""
        if self.recorded is not None:
            return self.recorded
        c = self.config
        source = c.get("source") or {}
        return {
            "path": str(self.path),
            "arch": c["arch"],
            "step": c.get("step"),
            "tokens": c.get("tokens"),
            "hf": source.get("hf_id") or source.get("name_or_path") or source.get("hf_dir"),
            "pruning": (c.get("pruning") or {}).get("method"),
            "tokenizer_sha256": self.tokenizer_sha256,
        }


def describe(record: dict) -> str:
    """One line of the model card: `- initialised from `PATH` (...)`."""
    what = [f"a {record['arch']} checkpoint"]
    if record.get("hf"):
        what.append(f"imported from Hugging Face ({record['hf']})")
    if record.get("pruning"):
        what.append(f"{record['pruning']}-pruned")
    if record.get("step"):
        what.append(f"step {record['step']:,} of its run")
    return f"- initialised from `{record['path']}` ({', '.join(what)}); a fresh optimizer and schedule"


class OriginCard(TrainHook):
    """Adds where the weights came from to the model card's Training section; training itself is unchanged."""

    def __init__(self, record: dict):
        self.line = describe(record)

    def card(self) -> list[str]:
        return [self.line]


def load_origin(init_from: str | os.PathLike, weights: bool = True) -> Origin:
    """The checkpoint (folder, run directory or pointer) a run starts from, refused in one line when it cannot be
    continued: an n-gram, a fine-tuned task model, a quantized checkpoint, a transformers folder not imported yet.
    `weights` loads them (a new run); a resumed run only needs the record."""
    path = Path(init_from)
    if (path / "config.json").is_file():
        hf = _json(path / "config.json")
        if "model_type" in hf and "arch" not in hf:
            raise CheckpointError(
                f"{init_from} is a transformers folder; import it first with `lmforge import-hf {init_from} "
                f"--out CKPT`, then prepare the data with `--tokenizer CKPT` and pretrain with `--init-from CKPT`"
            )
    src = ckpt.resolve_checkpoint(init_from)
    config = ckpt.read_config(src)
    arch = config.get("arch")
    if arch is None or "model" not in config:
        raise CheckpointError(f"{src}/config.json lacks 'arch' or 'model'; it is not an lmforge checkpoint")
    if is_statistical(arch):
        raise ConfigError(f"{init_from} is an {arch} model (count tables, no weights to continue training)")
    if arch in TASK_ARCHS:
        raise ConfigError(
            f"{init_from} is a fine-tuned {arch} (a task head on a backbone); continue pretraining from a "
            "language model checkpoint, such as the one it was fine-tuned from"
        )
    if config.get("quantization"):
        made_from = config.get("quantized_from")
        raise ConfigError(
            f"{init_from} is quantized ({config['quantization'].get('method')}), and training needs float "
            f"weights; start from the float checkpoint{f' it was made from ({made_from})' if made_from else ''}"
        )
    origin = Origin(src, config)
    if weights:
        model, _, _ = ckpt.load_checkpoint(src)
        origin.state = model.state_dict()
    return origin


def _json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _file_layers(config_file: str | os.PathLike | None) -> tuple[str | None, str | None, dict[str, Any]]:
    """(arch, preset, dotted overrides) of a YAML config file, so that its sections can be checked against a
    saved model like the command's own flags."""
    if config_file is None:
        return None, None, {}
    data = load_yaml(config_file)
    dotted: dict[str, Any] = {}
    for key, values in data.items():
        if key in ("arch", "preset"):
            continue
        if key not in ("model", "optim", "train") or not isinstance(values, dict):
            raise ConfigError(
                f"config file {config_file}: {key!r} should be a model, optim or train section (a mapping)"
            )
        dotted.update({f"{key}.{name}": value for name, value in values.items()})
    return data.get("arch"), data.get("preset"), dotted


def model_changes(saved: dict, cfg: RunConfig, allowed: tuple[str, ...] = ()) -> list[tuple[str, Any, Any]]:
    """(key, saved value, new value) for each model config key of `cfg` that differs from the `saved` model config
    (keys the saved config lacks, the tokenizer's vocab_size and `allowed` keys are not compared)."""
    now = json.loads(json.dumps(dataclasses.asdict(cfg.model)))
    return [
        (f"model.{k}", saved[k], now[k])
        for k in now
        if k in saved and k != "vocab_size" and k not in allowed and now[k] != saved[k]
    ]


def resumed_config(
    saved: dict, run_dir: Path, config_file, arch: str | None, preset: str | None, overrides: dict
) -> RunConfig:
    """The config of a resumed run: the saved one with the command's optim.* / train.* flags. The run's own
    model flags may be repeated (re-running an interrupted command with --resume added); a change is refused."""
    run = saved["run"]
    file_arch, file_preset, dotted = _file_layers(config_file)
    for name, given, was in (
        ("--arch", arch or file_arch, saved["arch"]),
        ("--preset", preset or file_preset, run.get("preset")),
    ):
        if given is not None and given != was:
            raise ConfigError(
                f"{run_dir} was trained with {name} {was or '(none)'}, this command asks for {given}; a resumed "
                "run keeps its model (drop the flag, or start a new run in another --out)"
            )
    cfg = build_run_config(base=run, overrides={**dotted, **overrides})
    for key, was, now in model_changes(run["model"], cfg):
        raise ConfigError(
            f"{run_dir} was trained with {key} {was}, this command asks for {now}; a resumed run keeps its "
            "model (drop the flag, or start a new run in another --out)"
        )
    return cfg


def init_config(
    origin: Origin, config_file, arch: str | None, preset: str | None, overrides: dict
) -> RunConfig:
    """The config of a run started from `origin`: its architecture and sizes, fresh optimizer and training
    settings (the defaults, the config file's, the command's). Flags that would change the architecture are
    refused; training keys of the model (dropout, masking, a shorter block_size) apply."""
    saved_arch, saved_model = origin.config["arch"], origin.config["model"]
    file_arch, file_preset, dotted = _file_layers(config_file)
    if preset or file_preset:
        raise ConfigError(
            f"--preset {preset or file_preset} sets a model's size; with --init-from the model is "
            f"{origin.path}'s ({saved_arch}), so drop it"
        )
    given = arch or file_arch
    if given is not None and given != saved_arch:
        raise ConfigError(f"--arch {given} differs from {origin.path}'s architecture ({saved_arch}); drop it")
    cfg = build_run_config(base={"arch": saved_arch, "model": saved_model}, overrides={**dotted, **overrides})
    check_model_flags(origin, cfg)
    return cfg


def check_model_flags(origin: Origin, cfg: RunConfig, flag: str = "--init-from") -> None:
    """Refuse a run config whose model differs from the checkpoint's (given by `flag`) in more than its training
    keys."""
    for key, was, now in model_changes(origin.config["model"], cfg, allowed=(*TRAINING_KEYS, "block_size")):
        raise ConfigError(
            f"--{key} {now} would change the architecture of {origin.path} ({key} {was}); with {flag} the "
            f"model is the checkpoint's: only model.{', model.'.join(TRAINING_KEYS)}, a shorter "
            "model.block_size, optim.* and train.* apply"
        )


def fit_state(origin: Origin, cfg: RunConfig) -> dict[str, torch.Tensor]:
    """The origin's weights for the model `cfg` describes: the same tensors, learned position embeddings cut to a
    shorter block_size. Checked against the model's shapes (built on the meta device: no memory, no time)."""
    assert origin.state is not None
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in build_model(cfg.arch, cfg.model).state_dict().items()}
    state = dict(origin.state)
    for key, tensor in origin.state.items():
        want = shapes.get(key)
        if want is None or want == tensor.shape:
            continue
        if key.endswith("pos_emb.weight") and want[1:] == tensor.shape[1:] and want[0] < tensor.shape[0]:
            state[key] = tensor[: want[0]].clone()
        elif key.endswith("pos_emb.weight") and want[1:] == tensor.shape[1:]:
            raise ConfigError(
                f"--model.block_size {cfg.model.block_size} is longer than the {tensor.shape[0]} positions "
                f"{origin.path} has learned; use at most {tensor.shape[0]}"
            )
        else:
            raise CheckpointError(
                f"{origin.path}: {key} has shape {tuple(tensor.shape)}, the model needs {tuple(want)}"
            )
    missing = sorted(set(shapes) - set(state))
    if missing:
        raise CheckpointError(f"{origin.path} lacks weights of the model: {', '.join(missing[:3])}")
    return state


def check_origin(
    record: dict | None, init_from: str | os.PathLike | None, run_dir: Path, flag: str = "--init-from"
) -> None:
    """A resumed run repeats the checkpoint it started from (`flag`, or no --init-from): the same checkpoint, or a
    one-line refusal."""
    if init_from is None:
        return
    if record is None:
        raise ConfigError(f"{run_dir} was not started from a checkpoint ({flag}); resume it without {flag}")
    given = ckpt.resolve_checkpoint(init_from)
    if str(given) != record["path"]:
        raise ConfigError(
            f"{run_dir} was started from {record['path']}, this command says {flag} {given}; resume it "
            f"with its own {flag}"
        )
