"""The one checkpoint format, written atomically, and run directories with `latest` / `best` pointers.

    CKPT/config.json        architecture, model config, tokenizer fingerprint, run config, lmforge version
    CKPT/model.safetensors  weights
    CKPT/tokenizer.json     Hugging Face tokenizers format
    CKPT/train_state.pt     optimizer, step, RNG states, data position (resumable runs only)
    CKPT/metrics.jsonl      the run's metrics up to this checkpoint
    CKPT/README.md          a generated model card

A checkpoint is written into a temporary folder, fsynced, then renamed into place; only then do the run's
`latest` / `best` pointers move to it, so a crash never leaves a half-written checkpoint as the latest one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import typing
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from lmforge.config import coerce
from lmforge.device import autocast_dtype, inference_dtype, pick_device
from lmforge.errors import CheckpointError, ConfigError, TokenizerError
from lmforge.models.inference import QUANTIZED, params_dtype, to_inference_dtype
from lmforge.models.quantized import prepare_quantized
from lmforge.models.registry import build_model, model_config_class
from lmforge.outputs import check_output, fsync_dir, os_error_from, staged
from lmforge.tokenizers import Tokenizer
from lmforge.version import __version__

CKPT_PATTERN = re.compile(r"^ckpt-(\d+)$")


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module behind torch.compile (so no `_orig_mod.` prefix reaches the saved weights)."""
    return getattr(model, "_orig_mod", model)


def tied_aliases(model: nn.Module) -> set[str]:
    """State-dict keys that name a tensor an earlier key already holds (tied weights such as an output layer that
    is the embedding matrix): safetensors stores each tensor once, under its first name."""
    seen, aliases = set(), set()
    for key, value in unwrap(model).state_dict(keep_vars=True).items():
        ident = (value.data_ptr(), tuple(value.shape)) if value.numel() else None
        if ident is not None and ident in seen:
            aliases.add(key)
        seen.add(ident)
    return aliases


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    model = unwrap(model)
    aliases = tied_aliases(model)
    return {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items() if k not in aliases}


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


class _WriteRecorder:
    """A file for torch.save that remembers the OSError of a failed write: torch reports a full disk only as
    "[enforce fail at inline_container.cc] unexpected pos", which names neither the file nor the cause."""

    def __init__(self, fh):
        self.fh, self.error = fh, None

    def write(self, data) -> int:
        view, done = memoryview(data).cast("B"), 0
        try:
            while done < len(view):  # an unbuffered file may take part of it
                done += self.fh.write(view[done:])
        except OSError as exc:
            self.error = exc
            raise
        return done

    def flush(self) -> None:
        pass


def save_weights(state: dict[str, torch.Tensor], path: Path) -> None:
    """A safetensors file, fsynced; a failed write raises the OSError behind it (a full disk...), naming `path`."""
    try:
        save_file(state, str(path), metadata={"format": "pt"})
    except SafetensorError as exc:  # e.g. "I/O error: No space left on device (os error 28)"
        error = os_error_from(exc, path)
        if error is None:
            raise
        raise error from None
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def _save_torch(obj, path: Path) -> None:
    with open(path, "wb", buffering=0) as fh:  # unbuffered: a failed write fails in torch.save, not at close
        recorder = _WriteRecorder(fh)
        try:
            torch.save(obj, recorder)
        except (RuntimeError, OSError):  # torch reports a failed write as a RuntimeError, or passes it on
            if recorder.error is None:
                raise
            error = recorder.error
            if error.filename is None:
                error.filename = str(path)
            raise error from None
        os.fsync(fh.fileno())


def save_checkpoint(
    folder: str | os.PathLike,
    model: nn.Module | dict[str, torch.Tensor],
    tokenizer: Tokenizer,
    config: dict,
    train_state: dict | None = None,
    metrics_file: str | os.PathLike | None = None,
    card: str | None = None,
    overwrite: bool = False,
    inputs: tuple = (),
    folders: dict[str, Path] | None = None,
) -> Path:
    """Write a complete checkpoint folder atomically (lmforge.outputs.staged). An existing non-empty `folder` is
    refused unless overwrite=True (the trainer's own ckpt-N, or a command's --overwrite); `inputs` (what the
    command read) are never inside the folder it replaces. The folder it replaces goes only once the new one is
    whole. `model` is a module or its state dict (gathered from several processes); `folders` are finished
    folders written beside (a distributed run's shards) moved in under the given names before the commit."""
    folder = check_output(folder, overwrite=overwrite, inputs=inputs, error=CheckpointError)
    config = dict(config)
    config["lmforge_version"] = __version__
    config["tokenizer"] = {
        "file": "tokenizer.json",
        "kind": tokenizer.kind,
        "vocab_size": tokenizer.vocab_size,
        "sha256": tokenizer.sha256(),
    }
    with staged(folder) as tmp:
        save_weights(model if isinstance(model, dict) else model_state(model), tmp / "model.safetensors")
        for name, source in (folders or {}).items():
            os.replace(source, tmp / name)
        _write_file(tmp / "tokenizer.json", tokenizer.to_str().encode("utf-8"))
        _write_file(tmp / "config.json", json.dumps(config, indent=2).encode("utf-8"))
        if train_state is not None:
            _save_torch(train_state, tmp / "train_state.pt")
        if metrics_file is not None and Path(metrics_file).is_file():
            _write_file(tmp / "metrics.jsonl", Path(metrics_file).read_bytes())
        if card is not None:
            _write_file(tmp / "README.md", card.encode("utf-8"))
    return folder


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint folder from a checkpoint folder, a run directory (its latest) or a `latest`/`best` pointer."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{path} does not exist; give a checkpoint folder or a run directory")
    if p.is_file() and p.name in ("latest", "best"):  # pointer files where symlinks are unavailable
        p = p.parent / p.read_text(encoding="utf-8").strip()
    if (p / "config.json").is_file():
        return p.resolve()
    for pointer in ("latest",):
        if (p / pointer).exists():
            return resolve_checkpoint(p / pointer)
    raise CheckpointError(
        f"{path} is neither a checkpoint (no config.json) nor a run directory with checkpoints"
    )


def read_config(ckpt: Path) -> dict:
    try:
        config = json.loads((ckpt / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(
            f"{ckpt}/config.json is unreadable or corrupted; use another checkpoint"
        ) from None
    if config.get("lmforge_version") == "0.1.0":
        _tanh_gelu(config)
    return config


def _tanh_gelu(config) -> None:
    """lmforge 0.1.0 called GPT-2's tanh approximation "gelu"; since 0.2.0 that name is the exact GELU."""
    if isinstance(config, dict):
        if config.get("activation") == "gelu":
            config["activation"] = "gelu_tanh"
        for value in config.values():
            _tanh_gelu(value)


def model_from_config(ckpt: Path, config: dict) -> nn.Module:
    """The freshly initialised model that a checkpoint's config.json describes; a CheckpointError (one line) when
    its values do not fit their fields, e.g. `"n_layer": "two"`."""
    arch = config["arch"]
    try:
        fields = config["model"]
        if not isinstance(fields, dict):
            raise ConfigError(f"'model' is a {type(fields).__name__}, not a mapping")
        hints = typing.get_type_hints(model_config_class(arch))
        typed = {k: coerce(v, hints[k], f"model.{k}") if k in hints else v for k, v in fields.items()}
        return build_model(arch, typed)
    except (ConfigError, TypeError, ValueError) as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:120]
        raise CheckpointError(
            f"{ckpt}/config.json does not describe a valid {arch} model ({reason}); the file is corrupted"
        ) from None


def load_checkpoint(
    path: str | os.PathLike, device: torch.device | str = "cpu"
) -> tuple[nn.Module, Tokenizer, dict]:
    """Load (model, tokenizer, config) from a checkpoint folder or run directory, checking that they match."""
    ckpt = resolve_checkpoint(path)
    config = read_config(ckpt)
    if "arch" not in config or "model" not in config:
        raise CheckpointError(f"{ckpt}/config.json lacks 'arch' or 'model'; it is not an lmforge checkpoint")
    tokenizer = Tokenizer.load(ckpt / "tokenizer.json")
    expected = config.get("tokenizer", {}).get("sha256")
    if expected and tokenizer.sha256() != expected:
        raise TokenizerError(
            f"the tokenizer in {ckpt} does not match the one the model was trained with (sha256 differs); "
            "restore the checkpoint's original tokenizer.json"
        )
    model = model_from_config(ckpt, config)
    if config.get("quantization"):  # empty quantized modules first, so the packed weights below fit them
        prepare_quantized(model, config["quantization"])
    if tokenizer.vocab_size > model.config.vocab_size:
        raise TokenizerError(
            f"the tokenizer has {tokenizer.vocab_size} tokens but the model only {model.config.vocab_size}"
        )
    weights = ckpt / "model.safetensors"
    if not weights.is_file():
        raise CheckpointError(f"{ckpt} has no model.safetensors; the checkpoint is incomplete")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(
            f"{weights} is truncated or corrupted ({str(exc).splitlines()[0][:80]})"
        ) from None
    missing, unexpected = model.load_state_dict(state, strict=False)
    aliases = tied_aliases(model)
    missing = [k for k in missing if k not in aliases]
    if missing or unexpected:
        raise CheckpointError(
            f"{weights} does not fit the model in config.json (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    return model.to(device), tokenizer, config


@dataclass
class Loaded:
    """A checkpoint loaded for inference: what task pipelines and evaluation need (lm.py's `LM` adds generation).
    `dtype` is the `--dtype` it was loaded with (None: fp32 weights, the device's default autocast)."""

    model: nn.Module
    tokenizer: Tokenizer
    config: dict
    path: Path
    device: torch.device
    dtype: str | None = None

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return inference_autocast(self.model, self.device, self.dtype)


def inference_autocast(model: nn.Module, device: torch.device, dtype: str | None) -> torch.dtype | None:
    """The autocast dtype of a model loaded with `dtype`: none for weights already in bf16/fp16 (they compute in
    their own dtype) or an explicit fp32; the device's default for this model (device.autocast_dtype) otherwise."""
    if params_dtype(model) != torch.float32 or dtype == "fp32":
        return None
    return autocast_dtype(device, "auto", model)


def apply_inference_dtype(model: nn.Module, device: torch.device, dtype: str | None) -> nn.Module:
    """`model` in the weight dtype `--dtype` names on `device` (device.inference_dtype; None: unchanged). On a
    CPU, auto's bf16 is for the GPT family only, the models it was measured faster for (device.CPU_AUTO_BF16);
    recurrent and encoder models, and int8/int4 quantized ones (their kernels take fp32), stay fp32 there unless
    bf16 is asked for."""
    if dtype == "auto" and device.type == "cpu":
        quantized = any(isinstance(m, QUANTIZED) for m in model.modules())
        if quantized or not hasattr(model, "new_cache"):
            dtype = "fp32"
    if dtype is not None:
        to_inference_dtype(model, inference_dtype(device, dtype))
    return model


def load_for_inference(path: str | os.PathLike, device: str = "auto", dtype: str | None = None) -> Loaded:
    """The checkpoint (folder, run directory or pointer) in eval mode on `device` (auto: CUDA when there is one),
    its weights in `dtype` (auto, bf16, fp16, fp32: device.inference_dtype; None: as stored, fp32)."""
    ckpt = resolve_checkpoint(path)
    target = pick_device(device)
    if dtype is not None:
        inference_dtype(target, dtype)  # a bad value or an unusable dtype is refused before the weights load
    model, tokenizer, config = load_checkpoint(ckpt, target)
    model = apply_inference_dtype(model.eval(), target, dtype)
    return Loaded(model, tokenizer, config, ckpt, next(model.parameters(), torch.empty(0)).device, dtype)


# ---- run directories -------------------------------------------------------------------------------


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    found = []
    if run_dir.is_dir():
        for child in run_dir.iterdir():
            m = CKPT_PATTERN.match(child.name)
            if m and child.is_dir() and not child.is_symlink():
                found.append((int(m.group(1)), child))
    return sorted(found)


def point(run_dir: Path, name: str, target: Path) -> None:
    """Atomically move the `name` pointer (a relative symlink) of a run directory to `target`."""
    link = run_dir / name
    tmp = run_dir / f".{name}.tmp-{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    try:
        os.symlink(target.name, tmp, target_is_directory=True)
    except OSError:  # no symlinks (some Windows set-ups): a pointer file naming the folder
        tmp.write_text(target.name, encoding="utf-8")
    os.replace(tmp, link)
    fsync_dir(run_dir)


def pointed(run_dir: Path, name: str) -> Path | None:
    link = run_dir / name
    if link.is_symlink():
        return run_dir / os.readlink(link)
    if link.is_file():
        return run_dir / link.read_text(encoding="utf-8").strip()
    return None


# What a run directory holds besides its checkpoints: a folder with nothing else is a run's own output (a run that
# failed before its first checkpoint, or a cross-validation's folds), which a new run may use.
RUN_FILES = ("config.yaml", "metrics.jsonl", "tensorboard", "latest", "best", "cv.json")
_RUN_ENTRY = re.compile(r"^(ckpt-\d+|fold-\d+|\.(tmp|old)-.*|\.(latest|best)\.tmp-\d+)$")


def is_run_dir(path: Path) -> bool:
    """A folder that holds nothing but what runs write (checkpoints, pointers, config.yaml, metrics, logs)."""
    return path.is_dir() and all(c.name in RUN_FILES or _RUN_ENTRY.match(c.name) for c in path.iterdir())


def require_new_run_dir(run_dir: str | os.PathLike) -> Path:
    """A run directory that holds no checkpoint yet (fine-tuning and distillation start fresh; pretrain resumes):
    a new or empty folder, or one a run left without a checkpoint (lmforge.outputs.check_output's rule)."""
    run_dir = Path(run_dir)
    if list_checkpoints(run_dir) or pointed(run_dir, "latest") is not None:
        raise CheckpointError(f"{run_dir} already holds checkpoints; choose another --out")
    return check_output(run_dir, own=is_run_dir, error=CheckpointError)


def resume_point(run_dir: str | os.PathLike, resume: bool) -> Path | None:
    """The checkpoint a resumable run continues from (its latest, with `resume`), or None for a new run, whose
    directory must hold no checkpoint yet (nor anything but a run's own files)."""
    run_dir = Path(run_dir)
    if resume:
        if pointed(run_dir, "latest") is None:
            raise CheckpointError(f"{run_dir} has no checkpoint to resume from; start without --resume")
        check_output(run_dir, own=lambda _: True, error=CheckpointError)  # the run's own folder: writable?
        return resolve_checkpoint(run_dir)
    if list_checkpoints(run_dir) or pointed(run_dir, "latest") is not None:
        raise CheckpointError(
            f"{run_dir} already holds checkpoints; pass --resume to continue, or choose another --out"
        )
    check_output(run_dir, own=is_run_dir, error=CheckpointError)
    return None


def prune(run_dir: Path, keep_last: int) -> None:
    """Delete old checkpoints, keeping the newest `keep_last` and whatever `latest` / `best` point to."""
    keep = {p.resolve() for p in (pointed(run_dir, "latest"), pointed(run_dir, "best")) if p is not None}
    checkpoints = list_checkpoints(run_dir)
    for _, path in checkpoints[: max(0, len(checkpoints) - keep_last)]:
        if path.resolve() not in keep:
            shutil.rmtree(path, ignore_errors=True)


def clean_stale(run_dir: Path) -> None:
    """Remove temporary folders that a crashed save left behind."""
    if run_dir.is_dir():
        for child in run_dir.iterdir():
            if child.name.startswith((".tmp-", ".old-")) and child.is_dir():
                shutil.rmtree(child, ignore_errors=True)
