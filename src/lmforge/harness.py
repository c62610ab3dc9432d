"""lmforge models in EleutherAI's lm-evaluation-harness: the `lmforge` model of its registry, and its command line.

Importing this module registers `LmforgeHarnessLM` under the name "lmforge" (lm-eval's `@register_model`). lm-eval
0.4 finds models only in its own registry, filled when a module is imported (it has no plugin entry points), so
its stock `lm_eval` command cannot know lmforge; this module's command line is lm-eval's own with lmforge
registered first:

    python -m lmforge.harness --model lmforge --model_args pretrained=RUN --tasks hellaswag --batch_size 16

(every lm_eval argument works the same; `lm_eval run ...`, `ls` and `validate` too). From Python, import this
module and call `lm_eval.simple_evaluate(model="lmforge", model_args="pretrained=RUN", ...)`, or pass
`LmforgeHarnessLM(...)` itself as the model.

What each request does, for a causal checkpoint (gpt, rnn, n-gram):
- `loglikelihood(context, continuation)`: the summed log-probability of the continuation's tokens after the
  context's (an empty context reads the end-of-sequence token, the start of every document in lmforge's training),
  and whether every one of them was the model's most likely token; sequences longer than the context keep their
  last block_size + 1 tokens. Rows are scored in batches of `batch_size` (LM.token_logprobs).
- `loglikelihood_rolling(text)`: the text's log-likelihood in lm-eval's disjoint rolling windows of the model's
  context (every token predicted once, each window with as much context as fits), batched the same way.
- `generate_until(context, gen_kwargs)`: LM.generate with `until` as stop strings and `max_gen_toks` new tokens
  (greedy unless gen_kwargs say do_sample), requests with equal settings in batches; a context too long for the
  model keeps its last tokens.
"""

from __future__ import annotations

import logging
import sys

from lmforge.errors import ConfigError
from lmforge.extras import require

require("lm_eval", extra="eval", feature="lmforge.harness (lm-evaluation-harness)")

# lm-eval fills its registry with its own models only while the registry is empty: they go in first, or
# registering "lmforge" would hide them all (--model hf, local-completions, ...) from this process.
import lm_eval.models  # noqa: E402, F401 - after the require, which names the extra when missing
from lm_eval.api.model import TemplateLM  # noqa: E402
from lm_eval.api.registry import register_model  # noqa: E402
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window  # noqa: E402

from lmforge.lm import LM, load  # noqa: E402

log = logging.getLogger("lmforge.harness")
DEFAULT_MAX_GEN_TOKS = 256
# gen_kwargs lm-eval tasks send that LM.generate takes as they are.
GENERATION_KEYS = {"do_sample", "temperature", "top_k", "top_p", "num_beams", "repetition_penalty"}


@register_model("lmforge")
class LmforgeHarnessLM(TemplateLM):
    """An lmforge checkpoint (`pretrained`: a checkpoint folder or run directory, or an `LM`) for lm-eval."""

    def __init__(
        self,
        pretrained: str | LM,
        device: str = "auto",
        batch_size: int | str = 16,
        max_gen_toks: int = DEFAULT_MAX_GEN_TOKS,
        compile: str | bool = "auto",
        **kwargs,
    ):
        super().__init__()
        unknown = {k for k, v in kwargs.items() if v is not None} - {"max_batch_size"}  # lm-eval's own extras
        if unknown:
            raise ConfigError(f"unknown model_args for lmforge: {', '.join(sorted(unknown))}")
        self.lm = (
            pretrained
            if isinstance(pretrained, LM)
            else load(pretrained, device=self._pick(device), compile=compile)
        )
        self._device = self.lm.device
        self.lm.check_generative()
        self.tokenizer = self.lm.tokenizer
        if self.tokenizer.eos_id is None:
            raise ConfigError("lm-evaluation-harness needs a tokenizer with an end-of-sequence token")
        # lm-eval passes "auto" or "auto:N" to search for a batch size; lmforge's batches are small: the default.
        self.batch_size = int(batch_size) if str(batch_size).isdigit() else 16
        self.max_gen_toks = int(max_gen_toks)
        self.block = self.lm.model.config.block_size

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None):
        """lm-eval's constructor from --model_args plus its own settings (batch_size, device): the model_args win,
        so `device=cpu` in them does not clash with the command line's default --device."""
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None and k not in arg_dict}
        return cls(**arg_dict, **extra)

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None):
        from lm_eval.utils import simple_parse_args_string

        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    @staticmethod
    def _pick(device: str | None) -> str:
        """lm-eval's command line asks for "cuda:0" unless told --device: on a machine without CUDA that means
        "auto" (as lm-eval's own hf model falls back to the CPU)."""
        import torch

        if not device or (device.startswith("cuda") and not torch.cuda.is_available()):
            if device:
                log.warning("CUDA is not available: lmforge runs on %s", "the CPU")
            return "auto"
        return device

    # ---- what TemplateLM asks for ------------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_id

    @property
    def max_length(self) -> int:
        return self.block

    @property
    def tokenizer_name(self) -> str:
        return str(self.lm.path or "lmforge")

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        return self.tokenizer.encode(string)

    def tok_decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens)

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """lm-eval's split of context and continuation tokens, with the end-of-sequence token before the context:
        lmforge models read every document after one (as LM.generate's prompts do)."""
        context_ids, continuation_ids = super()._encode_pair(context, continuation)
        return [self.eot_token_id, *context_ids], continuation_ids

    def _loglikelihood_tokens(
        self, requests, disable_tqdm: bool = False, **kwargs
    ) -> list[tuple[float, bool]]:
        """(sum of the continuation's log-probabilities, all greedy) for ((context, continuation), context ids,
        continuation ids) requests."""
        rows, lengths = [], []
        for _key, context, continuation in requests:
            if not continuation:
                raise ConfigError("lm-eval asked for the log-likelihood of an empty continuation")
            if len(continuation) > self.block:
                raise ConfigError(
                    f"a continuation of {len(continuation)} tokens does not fit the model's context of {self.block}"
                )
            rows.append((context + continuation)[-(self.block + 1) :])
            lengths.append(len(continuation))
        out = []
        scored = self.lm.token_logprobs(rows, batch_size=self.batch_size)
        for (key, _, _), (logprobs, greedy, _), n in zip(requests, scored, lengths):
            out.append((float(sum(logprobs[-n:])), bool(all(greedy[-n:]))))
            if key is not None:  # lm-eval's request cache (--use_cache)
                self.cache_hook.add_partial("loglikelihood", key, out[-1])
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        pairs, owner = [], []
        for index, (text,) in enumerate(req.args for req in requests):
            windows = get_rolling_token_windows(
                token_list=self.tok_encode(text),
                prefix_token=self.prefix_token_id,
                max_seq_len=self.block,
                context_len=1,
            )
            for context, continuation in map(make_disjoint_window, windows):
                pairs.append((None, context, continuation))
                owner.append(index)
        totals = [0.0] * len(requests)
        for index, (logprob, _) in zip(owner, self._loglikelihood_tokens(pairs)):
            totals[index] += logprob
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        groups: dict[str, list[int]] = {}
        settings = []
        for i, req in enumerate(requests):
            context, gen_kwargs = req.args
            options = self._generation_options(gen_kwargs)
            settings.append((context, options))
            groups.setdefault(repr(sorted(options.items())), []).append(i)
        out = [""] * len(requests)
        for rows in groups.values():
            options = settings[rows[0]][1]
            for first in range(0, len(rows), self.batch_size):
                chunk = rows[first : first + self.batch_size]
                contexts = [self._fit(settings[i][0], options["max_new_tokens"]) for i in chunk]
                for i, text in zip(chunk, self.lm.generate(contexts, **options)):
                    out[i] = text
        return out

    # ---- helpers ------------------------------------------------------------------------------------
    def _generation_options(self, gen_kwargs: dict) -> dict:
        kwargs = dict(gen_kwargs or {})
        until = kwargs.pop("until", None)
        stops = [until] if isinstance(until, str) else list(until or [])
        max_new = int(kwargs.pop("max_gen_toks", self.max_gen_toks))
        options = {"max_new_tokens": min(max_new, self.block - 1), "stop": [s for s in stops if s] or None}
        options.update({k: v for k, v in kwargs.items() if k in GENERATION_KEYS})
        if not options.get("do_sample"):
            options.update(do_sample=False, temperature=None, top_k=None, top_p=None)
        return options

    def _fit(self, context: str, max_new_tokens: int) -> str:
        """The context, left-truncated to the tokens that leave room for max_new_tokens in the model's context."""
        room = self.block - max_new_tokens - 1  # - 1: the end-of-sequence token LM.generate reads first
        ids = self.tokenizer.encode(context)
        return context if len(ids) <= room else self.tokenizer.decode(ids[-max(room, 1) :])


def main(argv: list[str] | None = None) -> None:
    """lm-eval's command line with the "lmforge" model registered (this module is imported)."""
    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()


if __name__ == "__main__":
    main()
