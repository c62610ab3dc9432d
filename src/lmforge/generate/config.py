"""`GenerationConfig`: how a model continues a prompt, under Hugging Face transformers' names and meanings.

`LM.generate` takes these fields as keyword arguments (over the checkpoint's own defaults, stored under the
"generation" key of its config.json with exactly the field names of transformers' GenerationConfig, so that
export-hf can write them as generation_config.json), checks them here, and turns them into the decoders'
parameters (`SamplingParams`, `BeamParams`).

As in transformers, decoding is greedy unless `do_sample=True`. lmforge's own older spelling still works: a call
that gives `temperature > 0`, `top_k` or `top_p` without saying `do_sample` samples (transformers would decode
greedily and warn), and `temperature=0` is greedy.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from lmforge.errors import ConfigError
from lmforge.generate.beam import BeamParams
from lmforge.generate.sampling import MIN_TEMPERATURE, REPETITION_PENALTY_RANGE, SamplingParams

# Other names accepted for a field (lmforge's `stop`; `max_tokens` as OpenAI spells it).
ALIASES = {"stop": "stop_strings", "max_tokens": "max_new_tokens"}
# Fields of transformers' GenerationConfig a stored "generation" key (an imported model's) may hold that change
# nothing here: the ids of special tokens lmforge takes from the tokenizer, and bookkeeping.
IGNORED_HF_KEYS = {"bos_token_id", "pad_token_id", "decoder_start_token_id", "transformers_version",
                   "_from_model_config", "use_cache"}  # fmt: skip
SAMPLING_KNOBS = ("temperature", "top_k", "top_p")


@dataclass
class GenerationConfig:
    """Generation settings (transformers' GenerationConfig fields of the same names).

    Lengths: `max_new_tokens` tokens at most are generated; `max_length` instead bounds prompt + new tokens (the
    prompt counted as the model reads it, after its leading end-of-sequence token); given both, max_new_tokens
    wins, as in transformers. `min_new_tokens`: end-of-sequence is not allowed before that many tokens.
    Decoding: greedy unless `do_sample` (then `temperature`, `top_k` (None or 0: off), `top_p` (None or 1: off));
    `num_beams` > 1 is beam search (with `length_penalty`, `early_stopping`; with `do_sample`, transformers' beam
    sampling). `num_return_sequences` outputs per
    prompt (sampled ones, or the best beams). `repetition_penalty` (CTRL's, 1: none), `no_repeat_ngram_size` (0:
    off). Generation ends at `eos_token_id` (an id or a list; None: the tokenizer's end-of-sequence token) or just
    before one of `stop_strings`.
    """

    max_new_tokens: int | None = 100
    max_length: int | None = None
    min_new_tokens: int = 0
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    num_beams: int = 1
    num_return_sequences: int = 1
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    length_penalty: float = 1.0
    early_stopping: bool = True
    eos_token_id: int | list[int] | None = None
    stop_strings: str | list[str] | None = None

    # ---- building ------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, values: dict, strict: bool = True) -> GenerationConfig:
        """A config from HF-named values (aliases accepted). strict: an unknown name is a TypeError naming the
        accepted ones; otherwise unknown names are dropped (a stored config written by a newer transformers)."""
        return cls().updated(values, strict=strict)

    @classmethod
    def from_checkpoint(cls, config: dict) -> GenerationConfig:
        """A checkpoint's stored defaults (its config.json "generation" key), or the built-in ones without it."""
        stored = config.get("generation") or {}
        if not isinstance(stored, dict):
            raise ConfigError(
                'the checkpoint\'s config.json "generation" must be an object of generation settings'
            )
        return cls.from_dict(stored, strict=False)

    def updated(self, values: dict, strict: bool = True) -> GenerationConfig:
        """A copy with `values` set (None values are skipped: "not given"). Giving `max_length` alone drops a
        default `max_new_tokens` (else the default would win); giving temperature > 0, top_k or top_p without
        do_sample turns sampling on, and temperature 0 turns it off (lmforge's older meaning)."""
        names = {f.name for f in dataclasses.fields(self)}
        given: dict = {}
        for key, value in values.items():
            name = ALIASES.get(key, key)
            if name not in names:
                if name in IGNORED_HF_KEYS or not strict:
                    continue
                raise TypeError(
                    f"unknown generation option {key!r}; the options are: {', '.join(sorted(names | set(ALIASES)))}"
                )
            if value is not None:
                given[name] = value
        if "max_length" in given and "max_new_tokens" not in given:
            given["max_new_tokens"] = None
        if "do_sample" not in given:
            if given.get("temperature") == 0:
                given["do_sample"] = False
            elif any(given.get(k) is not None for k in SAMPLING_KNOBS):
                given["do_sample"] = True
        out = dataclasses.replace(self, **given)
        out.validate()
        return out

    # ---- checking ------------------------------------------------------------------------------------
    def validate(self) -> None:
        """ConfigError, one sentence, for a value generation cannot use."""

        def integer(name: str, low: int, value=None) -> None:
            value = getattr(self, name) if value is None else value
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")

        for name, low in (("min_new_tokens", 0), ("num_beams", 1), ("num_return_sequences", 1),
                          ("no_repeat_ngram_size", 0)):  # fmt: skip
            integer(name, low)
        for name in ("max_new_tokens", "max_length"):
            if getattr(self, name) is not None:
                integer(name, 1 if name == "max_length" else 0)
        if self.max_new_tokens is None and self.max_length is None:
            raise ConfigError("give max_new_tokens or max_length")
        if self.top_k is not None:
            integer("top_k", 0)
        for name in ("do_sample", "early_stopping"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")
        t = self.temperature
        if not (isinstance(t, (int, float)) and math.isfinite(t) and (t == 0 or t >= MIN_TEMPERATURE)):
            raise ConfigError(
                f"temperature must be 0 (greedy) or a finite number >= {MIN_TEMPERATURE:g}, got {t}"
            )
        if self.top_p is not None and not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        low, high = REPETITION_PENALTY_RANGE
        if not (isinstance(self.repetition_penalty, (int, float)) and low <= self.repetition_penalty <= high):
            raise ConfigError(
                f"repetition_penalty must be between {low:g} and {high:g} (1: none), got {self.repetition_penalty}"
            )
        if not (isinstance(self.length_penalty, (int, float)) and math.isfinite(self.length_penalty)):
            raise ConfigError(f"length_penalty must be a finite number, got {self.length_penalty}")
        eos = self.eos_token_id
        if eos is not None:
            for e in [eos] if isinstance(eos, int) else eos if isinstance(eos, list) else [None]:
                integer("eos_token_id", 0, e)
        stops = self.stop_strings
        if stops is not None and not (
            isinstance(stops, str) or (isinstance(stops, list) and all(isinstance(s, str) for s in stops))
        ):
            raise ConfigError(f"stop_strings must be a string or a list of strings, got {stops!r}")
        if any(not s for s in self.stops()):
            raise ConfigError("a stop string is empty")
        if self.num_beams == 1 and not self.do_sample and self.num_return_sequences > 1:
            raise ConfigError(
                "num_return_sequences > 1 needs do_sample=True or num_beams >= num_return_sequences "
                "(greedy decoding has one answer)"
            )
        if self.num_beams > 1 and self.num_return_sequences > self.num_beams:
            raise ConfigError(
                f"num_return_sequences ({self.num_return_sequences}) can be at most num_beams ({self.num_beams})"
            )

    # ---- using ---------------------------------------------------------------------------------------
    def stops(self) -> list[str]:
        s = self.stop_strings
        return [s] if isinstance(s, str) else list(s or [])

    def eos_ids(self, tokenizer) -> tuple[int, ...]:
        """The ids that end generation: eos_token_id, else the tokenizer's end-of-sequence token (if any)."""
        eos = self.eos_token_id
        if eos is None:
            return () if tokenizer.eos_id is None else (tokenizer.eos_id,)
        return (eos,) if isinstance(eos, int) else tuple(eos)

    def new_tokens(self, prompt_length: int) -> int:
        """How many tokens may follow a prompt of `prompt_length` tokens (max_new_tokens, else max_length minus it)."""
        if self.max_new_tokens is not None:
            return self.max_new_tokens
        left = self.max_length - prompt_length
        if left < 1:
            raise ConfigError(
                f"max_length {self.max_length} leaves no room after a {prompt_length}-token prompt; raise it "
                "or give max_new_tokens"
            )
        return left

    def sampling_params(self, max_new_tokens: int, eos_ids: tuple[int, ...] = ()) -> SamplingParams:
        """The token-by-token decoder's parameters (temperature 0: greedy)."""
        return SamplingParams(
            max_new_tokens,
            self.temperature if self.do_sample else 0.0,
            self.top_k or None,
            None if self.top_p in (None, 1) else self.top_p,
            self.repetition_penalty,
            no_repeat_ngram_size=self.no_repeat_ngram_size,
            min_new_tokens=self.min_new_tokens,
            eos_ids=eos_ids,
        )

    def beam_params(self, max_new_tokens: int) -> BeamParams:
        """Beam search's parameters: with do_sample, transformers' beam-search multinomial sampling (beam.py)."""
        sample = self.do_sample and self.temperature != 0
        return BeamParams(
            self.num_beams,
            max_new_tokens,
            self.length_penalty,
            self.early_stopping,
            self.no_repeat_ngram_size,
            self.min_new_tokens,
            self.num_return_sequences,
            self.repetition_penalty,
            do_sample=sample,
            temperature=self.temperature if sample else 1.0,
            top_k=self.top_k or None,
            top_p=None if self.top_p in (None, 1) else self.top_p,
        )

    def to_hf(self) -> dict:
        """The settings under transformers' GenerationConfig names, as JSON values (what a checkpoint stores and
        generation_config.json holds). Off switches are spelled as transformers reads them (top_k 0, top_p 1.0:
        its own defaults would turn on top-k 50 when sampling)."""
        out = dataclasses.asdict(self)
        out["top_k"] = self.top_k or 0
        out["top_p"] = 1.0 if self.top_p is None else self.top_p
        return {k: v for k, v in out.items() if v is not None}


def default_generation(tokenizer) -> dict:
    """The "generation" key a new generative checkpoint stores: the built-in defaults, its end-of-sequence and
    padding ids, under transformers' names."""
    out = GenerationConfig(eos_token_id=tokenizer.eos_id).to_hf()
    if getattr(tokenizer, "pad_id", None) is not None:
        out["pad_token_id"] = tokenizer.pad_id
    if getattr(tokenizer, "bos_id", None) is not None:
        out["bos_token_id"] = tokenizer.bos_id
    return out
