"""Token-by-token decoding: greedy, temperature, top-k, top-p, the repetition, presence and frequency penalties,
no-repeat n-grams, logit bias and a minimum length, with or without a KV cache."""

from __future__ import annotations

import math
import os
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lmforge.errors import ConfigError

# What SamplingParams.validate accepts besides greedy (temperature 0): smaller temperatures or larger penalties
# overflow float32 logits.
MIN_TEMPERATURE = 1e-6
REPETITION_PENALTY_RANGE = (0.01, 100.0)


@dataclass
class SamplingParams:
    max_new_tokens: int = 100
    temperature: float = 1.0  # 0 = greedy
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0  # 0: off; n: never produce an n-gram the sequence (prompt included) holds
    min_new_tokens: int = 0  # the eos_ids are forbidden before this many new tokens
    eos_ids: tuple[int, ...] = ()
    # OpenAI's penalties, over the tokens generated so far: logit -= presence * (count > 0) + frequency * count.
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] | None = None  # token id -> added to its logit (OpenAI's logit_bias)

    def batch_key(self) -> tuple:
        """Equal for parameters that decode alike whatever their length (requests that may share a batch)."""
        return (
            self.temperature, self.top_k, self.top_p, self.repetition_penalty, self.no_repeat_ngram_size,
            self.min_new_tokens, self.eos_ids, self.presence_penalty, self.frequency_penalty,
            tuple(sorted((self.logit_bias or {}).items())),
        )  # fmt: skip

    def validate(self) -> None:
        """ConfigError, one sentence, for a value that cannot be sampled with (NaN, infinity, out of range)."""
        if self.max_new_tokens < 0:
            raise ConfigError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        t = self.temperature
        if not (math.isfinite(t) and (t == 0 or t >= MIN_TEMPERATURE)):
            # Below MIN_TEMPERATURE the scaled logits overflow float32 and the probabilities become NaN.
            raise ConfigError(
                f"temperature must be 0 (greedy) or a finite number >= {MIN_TEMPERATURE:g}, got {t}"
            )
        if self.top_k is not None and self.top_k < 1:
            raise ConfigError(f"top_k must be >= 1, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:  # NaN fails the comparison too
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        low, high = REPETITION_PENALTY_RANGE
        if not low <= self.repetition_penalty <= high:
            raise ConfigError(
                f"repetition_penalty must be between {low:g} and {high:g} (1: none), got {self.repetition_penalty}"
            )


SEED_RANGE = (-(1 << 63), (1 << 64) - 1)  # what torch.Generator.manual_seed takes


def seeded_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator | None:
    """A generator seeded with `seed` (None: the global one); a seed torch cannot take is a ConfigError."""
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, int) or not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
        raise ConfigError(f"seed must be an integer between -2**63 and 2**64 - 1, got {seed!r}")
    return torch.Generator(device=device).manual_seed(seed)


def next_token(
    logits: torch.Tensor,
    seen: torch.Tensor,
    p: SamplingParams,
    generator: torch.Generator | None,
    new: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pick the next token (B,) from last-position logits (B, V); `seen` (B, T) are the tokens so far, `new` (B, N)
    those generated so far (the presence and frequency penalties and min_new_tokens count them)."""
    logits = adjust_logits(logits.float(), seen, p, new)
    if p.temperature == 0:
        return logits.argmax(dim=-1)
    return sample(filtered(logits / p.temperature, p).softmax(-1), generator)


def adjust_logits(
    logits: torch.Tensor, seen: torch.Tensor, p: SamplingParams, new: torch.Tensor | None = None
) -> torch.Tensor:
    """The logits (B, V) after the penalties, bans and biases of `p` (before temperature and filtering)."""
    steps = 0 if new is None else new.shape[1]
    if p.logit_bias:
        ids = torch.tensor(list(p.logit_bias), dtype=torch.long, device=logits.device)
        bias = torch.tensor(list(p.logit_bias.values()), dtype=logits.dtype, device=logits.device)
        logits = logits.index_add(1, ids, bias.expand(logits.shape[0], -1))
    if (p.presence_penalty or p.frequency_penalty) and steps:
        counts = torch.zeros_like(logits).scatter_add_(1, new, torch.ones_like(new, dtype=logits.dtype))
        logits = logits - p.frequency_penalty * counts - p.presence_penalty * (counts > 0).to(logits.dtype)
    if p.no_repeat_ngram_size:
        for row, tokens in enumerate(seen.tolist()):
            banned = banned_ngram_tokens(tokens, p.no_repeat_ngram_size)
            if banned:
                logits[row, banned] = float("-inf")
    if p.eos_ids and steps < p.min_new_tokens:
        logits[:, list(p.eos_ids)] = float("-inf")
    if p.repetition_penalty != 1.0:
        # CTRL's penalty: make already-seen tokens less likely whatever the sign of their logit.
        prev = logits.gather(1, seen)
        logits = logits.scatter(
            1, seen, torch.where(prev > 0, prev / p.repetition_penalty, prev * p.repetition_penalty)
        )
    return logits


def banned_ngram_tokens(seq: list[int], n: int) -> list[int]:
    """Tokens that would repeat an n-gram of `seq` if appended to it."""
    if len(seq) < n:
        return []
    prefix = tuple(seq[len(seq) - n + 1 :]) if n > 1 else ()
    return [seq[i + n - 1] for i in range(len(seq) - n + 1) if tuple(seq[i : i + n - 1]) == prefix]


def filtered(logits: torch.Tensor, p: SamplingParams) -> torch.Tensor:
    """Temperature-scaled logits (B, V) with the tokens top_k and top_p leave out set to -inf."""
    if p.top_k is not None and p.top_k < logits.size(-1):
        kth = torch.topk(logits, p.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if p.top_p is not None and p.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        # Drop a token when the tokens before it already cover top_p (the most likely one always stays).
        drop_sorted = (cum - sorted_logits.softmax(-1)) >= p.top_p
        # Explicitly: a top_p below float32's smallest number compares as 0 and would otherwise drop every token.
        drop_sorted[:, 0] = False
        drop = drop_sorted.scatter(1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token (B,) drawn from each row of probabilities (B, V), by inverting the cumulative distribution.

    One uniform number per row: torch.multinomial draws V exponential numbers per row instead (0.9 ms a token at
    GPT-2's 50,257 tokens on a CPU, against ~0.1 ms here). Tokens of probability 0 are never drawn: the first
    cumulative sum above u is a step up, and u, at most (1 - 2^-24) times the total, rounds below it.
    """
    cdf = probs.cumsum(-1)
    u = torch.rand(probs.shape[0], 1, generator=generator, device=probs.device, dtype=cdf.dtype) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(1)


COMPILE_CACHE_ENV = "LMFORGE_COMPILE_CACHE"


def compile_cache_dir() -> Path | None:
    """Where compiled decoding steps are kept for the next process: $LMFORGE_COMPILE_CACHE, else
    ~/.cache/lmforge/compile; None ("off", or TORCHINDUCTOR_CACHE_DIR already chosen) leaves PyTorch's own."""
    value = os.environ.get(COMPILE_CACHE_ENV)
    if value == "off" or (not value and os.environ.get("TORCHINDUCTOR_CACHE_DIR")):
        return None
    return Path(value).expanduser() if value else Path.home() / ".cache" / "lmforge" / "compile"


def use_compile_cache() -> None:
    """Point PyTorch's compile caches (inductor's FX graph cache, AOTAutograd's, autotuning results) at
    compile_cache_dir(): its default, a folder under /tmp, does not survive a reboot or a fresh container."""
    folder = compile_cache_dir()
    if folder is not None:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)


class DecodeStep:
    """The one-new-token forward pass of cached decoding, compiled with torch.compile.

    Eager decoding at batch 1 spends much of each step launching ~20 small ops per layer; inductor fuses them.
    The shapes that change every step (the cache length, a padding mask) are compiled as dynamic, so one graph
    serves every position. Compiling costs tens of seconds on a CPU, so it pays off for long-lived generation (a
    server, long outputs), not one short reply. Any compile failure falls back to eager with one warning.

    On a CPU the step is compiled for inference (CPU_OPTIONS): its matrix products are chosen by benchmarking
    (max_autotune: inductor's own C++ GEMM kernels against aten's) and the code that calls the kernels is C++
    rather than Python (cpp_wrapper).
    The compiled code outlives the process (compile_cache_dir(): inductor's FX graph cache, AOTAutograd's cache,
    autotuning results), so a restarted server skips most of the compile. That is why the weights are not frozen
    into the graph by default: freezing (LMFORGE_COMPILE_FREEZE=1) makes AOTAutograd bypass its cache, and its
    oneDNN weight pre-packing made inductor bypass its own ("mkldnn tensors unpickleable"; `cpp.weight_prepack` is
    off for that reason). Measured at 6x384 while other jobs ran (benchmarks/compile_cache.py, RESULTS.md): first
    compiled token after a restart 19 s unfrozen against 40-75 s frozen; frozen steps were up to ~8% faster
    (1.25 against 1.37 ms on the quiet machine, 2026-12-04) and held a second copy of the weights (GPT-2 124M:
    peak RSS 0.85 -> 2.2 GB). Frozen weights mean a model changed after compiling would decode with its old
    weights: the step notes the weights' version counters and decodes eagerly, with one warning, once they moved.

    `warm_up()` compiles in a background thread instead, on stand-in inputs of the shapes a server meets (batch 1,
    a larger batch with and without a padding mask), while calls decode eagerly; calls switch to the compiled step once
    all of them compiled. A restarted `serve --compile true` then answers its first request at once (6x384: 1.85 s
    after the process started, against 1.64 s for an eager server; benchmarks/serve_restart.py, RESULTS.md), at
    about a quarter of eager speed until the compile is done (20 s after a restart).
    """

    # (autotune_num_choices_displayed: the benchmarked choices are not printed to the user's terminal)
    CPU_OPTIONS = {
        "cpp.weight_prepack": False,
        "max_autotune": True,
        "cpp_wrapper": True,
        "autotune_num_choices_displayed": 0,
    }

    # While warm_up's thread compiles, the GIL changes hands every 0.1 ms instead of Python's 5 ms: eager decoding
    # releases it at every op and would otherwise wait up to 5 ms to get it back each time (6x384 on a loaded
    # machine, one run each: 22-31 tokens/s while compiling at 5 ms, 86-95 at 0.1 ms).
    WARM_UP_SWITCH_INTERVAL = 1e-4

    def __init__(self, model: nn.Module, build: bool = True):
        use_compile_cache()
        self.model = model
        cpu = next(model.parameters()).device.type == "cpu"
        self.freeze = cpu and os.environ.get("LMFORGE_COMPILE_FREEZE", "0") == "1"
        self.options = {**self.CPU_OPTIONS, "freezing": self.freeze} if cpu else None
        # build=False leaves torch.compile (and importing dynamo, ~1.4 s) to warm_up's thread.
        self.compiled: Callable | None = self.build() if build else None
        self.weights_version = self.version_of(model)
        self.warm_thread: threading.Thread | None = None
        self.warming = False  # True while warm_up's thread compiles: calls decode eagerly

    def build(self) -> Callable:
        return torch.compile(self.model, dynamic=True, options=self.options)

    @classmethod
    def warm_up(cls, model: nn.Module, on_ready: Callable[[float], None] | None = None) -> threading.Thread:
        """Start compiling `model`'s step in a background thread (once); `on_ready(seconds)` is called when calls
        go compiled."""
        step = getattr(model, "_decode_step", None)
        if step is None:
            step = model._decode_step = cls(model, build=False)
        if step.warm_thread is not None:
            return step.warm_thread
        block = model.config.block_size
        device = next(model.parameters()).device
        # Sizes unlike the model's own (heads, head size): dynamo gives equal input sizes one symbol ("duck
        # shaping"), and a batch or cache length equal to a head count would then be compiled as that constant.
        length = min(block, 29)

        def stand_in(batch: int, masked: bool) -> tuple[tuple, dict]:
            pos = length - 7  # ≥ 2: a position of 0 or 1 would be specialised (dynamo's 0/1 rule)
            x = torch.zeros(batch, 1, dtype=torch.long, device=device)
            keys = {"key_mask": torch.ones(batch, pos + 1, dtype=torch.bool, device=device)} if masked else {}
            return (x, model.new_cache(batch, length), pos), keys

        def work() -> None:
            start = time.perf_counter()
            interval = sys.getswitchinterval()
            sys.setswitchinterval(min(interval, step.WARM_UP_SWITCH_INTERVAL))
            try:
                if step.compiled is None:
                    step.compiled = step.build()
                with torch.no_grad():  # grad mode is per thread
                    for batch, masked in ((1, False), (3, False), (3, True)):
                        args, kwargs = stand_in(batch, masked)
                        if step.call_compiled(args, kwargs) is None:
                            return  # it failed and warned: calls decode eagerly
            except Exception as exc:  # noqa: BLE001 - torch.compile itself failing: eager decoding still works
                warnings.warn(f"compiling the decoding step failed ({exc}); decoding eagerly", stacklevel=1)
                step.compiled = None
                return
            finally:
                step.warming = False  # calls now go to the compiled step (or stay eager if it failed)
                sys.setswitchinterval(interval)
            if on_ready is not None:
                on_ready(time.perf_counter() - start)

        # A daemon: a server stopped mid-compile exits without waiting for it.
        step.warming = True
        step.warm_thread = threading.Thread(target=work, name="lmforge-compile-warm-up", daemon=True)
        step.warm_thread.start()
        return step.warm_thread

    @staticmethod
    def status(model: nn.Module) -> str:
        """ "compiling" (warm_up's thread is at work), "compiled", "eager" (compiling failed, or the weights changed
        after it) or "not started" (no compiled step yet)."""
        step = getattr(model, "_decode_step", None)
        if step is None:
            return "not started"
        return "compiling" if step.warming else "eager" if step.compiled is None else "compiled"

    @staticmethod
    def version_of(model: nn.Module) -> int:
        """Sum of the in-place-modification counters of the model's tensors: it grows whenever an optimizer step,
        load_state_dict or a merge writes into them."""
        return sum(t._version for t in (*model.parameters(), *model.buffers()))

    @classmethod
    def of(cls, model: nn.Module) -> DecodeStep:
        """The model's compiled step, built once and shared by every generation with it (kept as a plain
        attribute of the model: not a submodule, so it never reaches a state_dict)."""
        step = getattr(model, "_decode_step", None)
        if step is None:
            step = model._decode_step = cls(model)
        elif step.compiled is not None and step.weights_version != cls.version_of(model):
            warnings.warn(
                "the model's weights changed after its decoding step was compiled; decoding eagerly",
                stacklevel=2,
            )
            step.compiled = None
        return step

    def __call__(self, *args, **kwargs) -> torch.Tensor:
        if self.compiled is not None and not self.warming:  # not while warm_up's thread compiles
            out = self.call_compiled(args, kwargs)
            if out is not None:
                return out
        return self.model(*args, **kwargs)

    def call_compiled(self, args: tuple, kwargs: dict) -> torch.Tensor | None:
        """The compiled step's output, or None (with one warning, and eager from then on) if compiling fails."""
        if self.compiled is not None:
            import torch._inductor.config as inductor_config

            # Dynamo reads the global flag (not the compile options) when it traces, to keep the parameters as
            # constants rather than graph inputs; set around each call since any call may (re)trace.
            freezing, inductor_config.freezing = (
                inductor_config.freezing,
                self.freeze or inductor_config.freezing,
            )
            try:
                return self.compiled(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - whatever inductor raises, eager decoding still works
                warnings.warn(
                    f"compiled decoding failed ({type(exc).__name__}: {str(exc)[:200]}); decoding eagerly",
                    stacklevel=2,
                )
                self.compiled = None
            finally:
                inductor_config.freezing = freezing
        return None


@torch.no_grad()
def generate_tokens(
    model: nn.Module,
    prompt: torch.Tensor,
    params: SamplingParams,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    prompt_mask: torch.Tensor | None = None,
    compile: bool = False,
    observe: Callable[[torch.Tensor, torch.Tensor], None] | None = None,
) -> Iterator[torch.Tensor]:
    """Yield the next token ids (B,) one step at a time after prompt ids (B, T).

    With the cache, the prompt is processed once and each step feeds only the newest token. When the context
    fills the model's block size, the cache is rebuilt from the last half block (the uncached path always sees
    the last block_size tokens; both agree while the sequence fits the block).

    `prompt_mask` (B, T), True at real tokens, batches prompts of different lengths left-padded to one length
    (GPT models): every row then continues exactly as it would alone.

    `compile` runs the cached one-token steps through DecodeStep (torch.compile); the prompt's pass stays eager.
    `observe(logits, tokens)` sees each step's raw logits (B, V) and the tokens picked (B,) (the server's logprobs).
    """
    model.eval()
    block = model.config.block_size
    seq, mask = prompt, prompt_mask
    cache, pos = None, 0
    use_cache = use_cache and hasattr(model, "new_cache")
    step_model = DecodeStep.of(model) if compile and use_cache else model

    def keys(n: int) -> dict:  # the padding mask of the last n positions, for the models that take one
        return {} if mask is None else {"key_mask": mask[:, -n:]}

    for step in range(params.max_new_tokens):
        if hasattr(
            model, "next_token_logits"
        ):  # models that predict from the sequence directly (n-gram, RNN)
            logits = model.next_token_logits(seq)
        elif use_cache:
            if cache is None or pos >= cache.max_len:
                keep = min(seq.shape[1], block if cache is None else max(1, block // 2))
                # Only as long as this generation needs: a full-block cache of a large model is hundreds of MB.
                cache = model.new_cache(seq.shape[0], min(block, keep + params.max_new_tokens - step))
                logits = model(seq[:, -keep:], cache, 0, last_only=True, **keys(keep))[:, -1]
                pos = keep
            else:
                # A fresh (B, 1) tensor: a column of `seq` has a row stride that grows every step, and a compiled
                # step guards on strides (with batch > 1 it recompiled every step until dynamo made it dynamic).
                last = seq[:, -1:].clone(memory_format=torch.contiguous_format)
                logits = step_model(last, cache, pos, **keys(pos + 1))[:, -1]
                pos += 1
        else:
            logits = model(seq[:, -block:], **keys(min(block, seq.shape[1])))[:, -1]
        logits = logits.float()  # bf16/fp16 weights: callers (observe, the sampling below) get fp32 logits
        # Padding is not part of a row's text: the repetition penalty sees the row's last token in its place.
        seen = seq if mask is None else torch.where(mask, seq, seq[:, -1:])
        nxt = next_token(logits, seen, params, generator, seq[:, prompt.shape[1] :])
        if observe is not None:
            observe(logits, nxt)
        seq = torch.cat([seq, nxt[:, None]], dim=1)
        if mask is not None:
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        yield nxt
