"""Run configuration: dataclasses, YAML files, named presets and dotted command-line overrides.

Resolution order (later wins): the architecture's defaults → a named preset → a YAML file → `--section.key value`
overrides. The resolved config is saved with every checkpoint, so a run can always be reproduced.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lmforge.errors import ConfigError
from lmforge.models.registry import get_preset, model_config_class


@dataclass
class OptimConfig:
    name: str = "adamw"  # adamw | sgd
    lr: float = 1e-3
    weight_decay: float = 0.1  # applied to matrices only (not to biases, norms or embeddings' 1-d params)
    beta1: float = 0.9
    beta2: float = 0.99
    eps: float = 1e-8
    momentum: float = 0.9  # sgd only
    nesterov: bool = False  # sgd only
    grad_clip: float = 1.0  # max global grad norm; 0 turns clipping off
    schedule: str = "cosine"  # cosine | linear | constant | step
    warmup_steps: int = 100  # capped at a quarter of the run's steps, with a warning (train/optim.py)
    warmup_ratio: float | None = (
        None  # set: warm up for this fraction of the run's steps instead of warmup_steps
    )
    min_lr_ratio: float = 0.1  # cosine/linear decay down to lr * min_lr_ratio
    step_every: int = 1000  # step schedule: multiply lr by step_gamma every step_every steps
    step_gamma: float = 0.5
    decay_start: int = 0  # step schedule: steps (after warmup) at the full lr before the first decay period

    def validate(self) -> None:
        _choice("optim.name", self.name, ("adamw", "sgd"))
        _choice("optim.schedule", self.schedule, ("cosine", "linear", "constant", "step"))
        if not self.lr > 0:
            raise ConfigError(f"optim.lr must be positive, got {self.lr}")
        _range("optim.weight_decay", self.weight_decay, 0, None)
        _range("optim.beta1", self.beta1, 0, 1, high_open=True)
        _range("optim.beta2", self.beta2, 0, 1, high_open=True)
        _range("optim.momentum", self.momentum, 0, 1, high_open=True)
        _range("optim.grad_clip", self.grad_clip, 0, None)
        _range("optim.warmup_steps", self.warmup_steps, 0, None)
        if self.warmup_ratio is not None:
            _range("optim.warmup_ratio", self.warmup_ratio, 0, 1)
        _range("optim.min_lr_ratio", self.min_lr_ratio, 0, 1)
        _range("optim.step_every", self.step_every, 1, None)
        _range("optim.step_gamma", self.step_gamma, 0, 1)
        _range("optim.decay_start", self.decay_start, 0, None)


@dataclass
class TrainConfig:
    batch_size: int = 12
    grad_accum: int = 1  # micro-batches per optimizer step; the loss is normalised over all their tokens
    max_steps: int = 2000
    # Stop when this much training time has passed; the learning-rate schedule then ends with the time if that
    # comes before max_steps (planned at the pace so far).
    max_minutes: float | None = None
    max_tokens: int | None = None  # stop early after this many training tokens
    eval_every: int = 250
    eval_tokens: int = 131072  # validation tokens used by the periodic evaluation (0 = the whole split)
    log_every: int = 10
    save_every: int | None = None  # default: at every evaluation
    keep_last: int = 2  # checkpoints kept besides the best one
    patience: int | None = None  # early stop after this many evaluations without a better validation score
    seed: int = 1337
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    # auto | fp32 | bf16 | fp16. auto: bf16 (fp16 without bf16) autocast on a GPU; on a CPU with bf16 units (AMX or
    # AVX512-BF16) bf16 autocast for transformers at least device.CPU_BF16_MIN_WIDTH wide, where it measured faster;
    # fp32 elsewhere (device.cpu_bf16_pays says why).
    precision: str = "auto"
    # torch.compile the training model: auto = on CUDA; off on CPU, where it measured no faster than eager for
    # our GPT (benchmarks/train_throughput.py) and costs a minute of compilation. true | false force it.
    compile: str = "auto"
    tensorboard: bool = True
    # Fine-tuning: batches of similar lengths (less padding). Off by default, as in transformers: on a small data
    # set, length can correlate with the label and length-sorted batches then learn worse (measured in the tests).
    group_by_length: bool = False
    # Causal-LM fine-tuning (chat, decoder-only translate/summarize): each batch's examples packed side by side
    # into as few rows as fit its longest one, each attending only to itself (train/packing.py). The same gradient
    # as the padded batch, computed on less padding. auto = wherever the objective packs; true insists; false off.
    pack: str = "auto"
    threads: int | None = None  # CPU threads for torch (default: torch's choice)
    # On a CPU: glibc's malloc keeps freed memory for the next step instead of returning it to the system (no
    # page faults per step; device.keep_freed_memory). false leaves the allocator as it is.
    keep_freed_memory: bool = True
    # DP-SGD (train/privacy.py: classifiers, NLI, GPT pretraining, lm and chat fine-tuning): the target epsilon
    # (None: no differential privacy), delta (below 1 / the number of training examples) and the per-example
    # gradient norm bound.
    dp_epsilon: float | None = None
    dp_delta: float = 1e-5
    dp_max_grad_norm: float = 1.0
    # Under torchrun (train/distributed.py): batch_size stays the global batch of each micro-step, split across the
    # data-parallel ranks. auto = ddp, or fsdp when the model's training state would take over a quarter of one
    # device's memory. tensor_parallel N splits each GPT block's heads and MLP over N ranks. dist_timeout: seconds a
    # rank waits for the others before the run fails (a dead or stuck rank).
    strategy: str = "auto"  # auto | ddp | fsdp
    tensor_parallel: int = 1
    dist_timeout: float = 90.0

    def validate(self) -> None:
        for name in ("batch_size", "grad_accum", "max_steps", "eval_every", "log_every", "keep_last"):
            _range(f"train.{name}", getattr(self, name), 1, None)
        _range("train.eval_tokens", self.eval_tokens, 0, None)
        if self.save_every is not None:
            _range("train.save_every", self.save_every, 1, None)
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ConfigError(f"train.max_minutes must be positive, got {self.max_minutes}")
        if self.max_tokens is not None:
            _range("train.max_tokens", self.max_tokens, 1, None)
        if self.threads is not None:
            _range("train.threads", self.threads, 1, None)
        if self.patience is not None:
            _range("train.patience", self.patience, 0, None)
        _choice("train.precision", self.precision, ("auto", "fp32", "bf16", "fp16"))
        _choice("train.strategy", self.strategy, ("auto", "ddp", "fsdp"))
        _range("train.tensor_parallel", self.tensor_parallel, 1, None)
        if not self.dist_timeout > 0:
            raise ConfigError(f"train.dist_timeout must be positive seconds, got {self.dist_timeout}")
        # Configs of earlier releases hold a boolean for compile.
        self.compile = switch("train.compile", self.compile)
        self.pack = switch("train.pack", self.pack)
        if self.dp_epsilon is not None and not self.dp_epsilon > 0:
            raise ConfigError(f"the privacy budget epsilon must be positive, got {self.dp_epsilon}")
        if not 0 < self.dp_delta < 1:
            raise ConfigError(f"the privacy parameter delta must be between 0 and 1, got {self.dp_delta}")
        if not self.dp_max_grad_norm > 0:
            raise ConfigError(f"the per-example gradient bound must be positive, got {self.dp_max_grad_norm}")


@dataclass
class RunConfig:
    """Everything a training run needs besides its data: architecture, model shape, optimizer, loop."""

    arch: str = "gpt"
    preset: str | None = None
    model: Any = None  # the architecture's config dataclass (e.g. GPTConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> None:
        self.model.validate()
        self.optim.validate()
        self.train.validate()

    def to_dict(self) -> dict:
        return {
            "arch": self.arch,
            "preset": self.preset,
            "model": dataclasses.asdict(self.model),
            "optim": dataclasses.asdict(self.optim),
            "train": dataclasses.asdict(self.train),
        }

    def save_yaml(self, path: str | os.PathLike) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False), encoding="utf-8")


# ---- building ------------------------------------------------------------------------------------


def build_run_config(
    arch: str | None = None,
    preset: str | None = None,
    config_file: str | os.PathLike | None = None,
    overrides: dict[str, Any] | list[str] | None = None,
    base: dict | None = None,
) -> RunConfig:
    """Resolve a RunConfig from (in order) defaults, a preset, a YAML file, a saved config dict and overrides.

    `overrides` is either a dict {"optim.lr": 3e-4} or command-line words ["--optim.lr", "3e-4", ...].
    """
    layers: list[dict] = []
    if base is not None:
        layers.append(base)
    if config_file is not None:
        layers.append(load_yaml(config_file))
    # The architecture and preset may come from the file or the flags; flags win.
    for layer in layers:
        arch = layer.get("arch", arch) if arch is None else arch
        preset = layer.get("preset", preset) if preset is None else preset
    if preset is not None:
        preset_arch, preset_values = get_preset(preset)
        if arch is not None and arch != preset_arch:
            raise ConfigError(f"preset {preset!r} is a {preset_arch!r} model, not {arch!r}")
        arch = preset_arch
    arch = arch or "gpt"
    cfg = RunConfig(arch=arch, preset=preset, model=model_config_class(arch)())
    if preset is not None:
        apply_section(cfg.model, preset_values, "model")
    for layer in layers:
        unknown = set(layer) - {"arch", "preset", "model", "optim", "train"}
        if unknown:
            raise ConfigError(
                _unknown_message(sorted(unknown)[0], ["arch", "preset", "model", "optim", "train"])
            )
        for section in ("model", "optim", "train"):
            values = layer.get(section) or {}
            if not isinstance(values, dict):
                raise ConfigError(
                    f"config section {section!r} must be a mapping, got {type(values).__name__}"
                )
            apply_section(getattr(cfg, section), values, section)
    for key, value in parse_overrides(overrides).items():
        set_dotted(cfg, key, value)
    cfg.validate()
    return cfg


def load_yaml(path: str | os.PathLike) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping with model/optim/train sections")
    return data


def parse_overrides(overrides: dict[str, Any] | list[str] | None) -> dict[str, Any]:
    """Turn ["--optim.lr", "3e-4", "--model.bias=false"] into {"optim.lr": "3e-4", "model.bias": "false"}."""
    if overrides is None:
        return {}
    if isinstance(overrides, dict):
        return dict(overrides)
    result: dict[str, Any] = {}
    words = list(overrides)
    i = 0
    while i < len(words):
        word = words[i]
        if not word.startswith("--") or "." not in word.split("=", 1)[0]:
            raise ConfigError(f"unrecognized argument {word!r}; config overrides look like --optim.lr 3e-4")
        key = word[2:]
        if "=" in key:
            key, value = key.split("=", 1)
            i += 1
        else:
            if i + 1 >= len(words) or (words[i + 1].startswith("--") and not _is_number(words[i + 1])):
                raise ConfigError(f"override --{key} needs a value, e.g. --{key} VALUE")
            value = words[i + 1]
            i += 2
        result[key.replace("-", "_")] = value
    return result


def set_dotted(cfg: RunConfig, key: str, value: Any) -> None:
    section, _, name = key.partition(".")
    if section not in ("model", "optim", "train") or not name:
        raise ConfigError(_unknown_message(key, _all_keys(cfg)))
    current = getattr(getattr(cfg, section), name, None)
    if isinstance(current, dict):  # a mapping override changes the keys it names and keeps the others
        value = {**current, **_coerce_container(value, dict, key)}
    apply_section(getattr(cfg, section), {name: value}, section, all_keys=_all_keys(cfg))


# ---- helpers -------------------------------------------------------------------------------------


def _all_keys(cfg: RunConfig) -> list[str]:
    return [f"{s}.{f.name}" for s in ("model", "optim", "train") for f in dataclasses.fields(getattr(cfg, s))]


def apply_section(obj: Any, values: dict, section: str, all_keys: list[str] | None = None) -> None:
    fields = {f.name: f for f in dataclasses.fields(obj)}
    hints = typing.get_type_hints(type(obj))
    for name, value in values.items():
        if name not in fields:
            keys = all_keys or [f"{section}.{n}" for n in fields]
            raise ConfigError(_unknown_message(f"{section}.{name}", keys))
        setattr(obj, name, coerce(value, hints[name], f"{section}.{name}"))


def coerce(value: Any, hint: Any, key: str) -> Any:
    """Convert a YAML or command-line value to the field's declared type, or raise a ConfigError."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        return coerce(value, args[0], key)
    container = origin or hint
    if container in (dict, list, tuple):
        return _coerce_container(value, container, key)
    try:
        if hint is bool:
            if isinstance(value, bool):
                return value
            text = str(value).lower()
            if text in ("true", "1", "yes", "on"):
                return True
            if text in ("false", "0", "no", "off"):
                return False
            raise ValueError
        if hint is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        if hint is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if hint is str:
            if not isinstance(value, (str, int, float)):
                raise ValueError
            return str(value)
    except (TypeError, ValueError):
        name = getattr(hint, "__name__", str(hint))
        raise ConfigError(f"{key} must be {name}, got {value!r}") from None
    return value


def _coerce_container(value: Any, kind: type, key: str) -> Any:
    """A mapping or list field: as is from YAML or Python, parsed from a JSON/YAML string on the command line
    (--model.encoder '{"n_embd": 64}', --model.widths '[3, 4]')."""
    example = "'{\"n_embd\": 64}'" if kind is dict else "'[3, 4, 5]'"
    what = "a mapping" if kind is dict else "a list"
    if isinstance(value, str):
        if kind is not dict and value.strip() and value.strip()[0] not in "[-":
            value = f"[{value}]"  # --model.widths 3,4,5
        try:
            value = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError as exc:
            first = str(exc).splitlines()[0]
            raise ConfigError(
                f"{key} must be {what} in JSON/YAML, e.g. {example}; could not parse it ({first})"
            ) from None
    if kind is dict and isinstance(value, dict):
        return dict(value)
    if kind in (list, tuple) and isinstance(value, (list, tuple)):
        return kind(value)
    raise ConfigError(f"{key} must be {what}, e.g. --{key} {example}, got {value!r}")


def _is_number(word: str) -> bool:
    try:
        float(word)
        return True
    except ValueError:
        return False


def _unknown_message(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(known)}"
    return f"unknown config key {key!r}{hint}"


def switch(name: str, value) -> str:
    """An auto | true | false setting, also from a boolean or yes/no/on/off/1/0."""
    value = {"1": "true", "yes": "true", "on": "true", "0": "false", "no": "false", "off": "false"}.get(
        str(value).lower(), str(value).lower()
    )
    _choice(name, value, ("auto", "true", "false"))
    return value


def _choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(choices)}, got {value!r}")


def _range(key: str, value: float, low: float | None, high: float | None, high_open: bool = False) -> None:
    if (low is not None and value < low) or (
        high is not None and (value >= high if high_open else value > high)
    ):
        bound = f">= {low}" if high is None else f"in [{low}, {high}{')' if high_open else ']'}"
        raise ConfigError(f"{key} must be {bound}, got {value}")
