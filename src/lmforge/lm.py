"""`load(CKPT)` → an `LM`: a model with its tokenizer, ready to generate text and be evaluated."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import torch

from lmforge.checkpoint import (
    apply_inference_dtype,
    inference_autocast,
    load_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
)
from lmforge.device import autocast, inference_dtype, pick_device, use_compile
from lmforge.errors import ConfigError
from lmforge.eval.perplexity import evaluate
from lmforge.generate.beam import BeamParams, beam_search, beam_search_prompts, continue_prompts, tokens_until
from lmforge.generate.config import GenerationConfig, default_generation
from lmforge.generate.sampling import SamplingParams, generate_tokens, seeded_generator
from lmforge.generate.text import text_pieces
from lmforge.generate.transduce import decode_tokens, encode_source
from lmforge.models.modes import eval_mode
from lmforge.models.registry import TASK_MODELS
from lmforge.models.seq2seq import decoder_start_id
from lmforge.tasks.translate.pipeline import check_transducer
from lmforge.tokenizers import Tokenizer


class LM:
    """A trained language model and its tokenizer."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Tokenizer,
        config: dict,
        path: Path | None = None,
        compile: str | bool = "auto",
        dtype: str | None = None,
    ):
        """`dtype` (auto, bf16, fp16, fp32; device.inference_dtype) casts the model's weights in place, and its KV
        cache follows them; None leaves the model as given (fp32 weights, the device's default autocast)."""
        self.device = next(model.parameters(), torch.empty(0)).device  # table models have no parameters
        self.model = apply_inference_dtype(model.eval(), self.device, dtype)
        self.tokenizer = tokenizer
        self.config = config
        self.path = path
        self.dtype = dtype
        self.amp_dtype = inference_autocast(self.model, self.device, dtype)
        # Cached decoding's one-token steps through torch.compile (generate/sampling.py DecodeStep).
        self.compile_decoding = use_compile(compile, self.device)

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        device: str = "auto",
        compile: str | bool = "auto",
        dtype: str | None = None,
    ) -> LM:
        """`compile`: torch.compile the decoding step (auto: on CUDA only; true also pays off on a CPU for long
        generations and servers, after a compile of tens of seconds). `dtype`: the weights' dtype, auto, bf16,
        fp16 or fp32 (device.inference_dtype: auto is bf16 on CUDA and, for gpt models, on CPUs with bf16 units,
        else fp32); None keeps them fp32, as stored. Logits reach callers as fp32 whatever the weights."""
        ckpt = resolve_checkpoint(path)
        target = pick_device(device)
        if dtype is not None:
            inference_dtype(target, dtype)  # a bad or unusable dtype is refused before the weights load
        model, tokenizer, config = load_checkpoint(ckpt, target)
        return cls(model, tokenizer, config, ckpt, compile, dtype)

    def save_pretrained(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write a checkpoint folder (weights, tokenizer, config; no training state). An existing non-empty `path`
        is replaced only with overwrite=True, and never the folder this model was loaded from (or one holding it)."""
        config = {k: v for k, v in self.config.items() if k not in ("lmforge_version", "tokenizer")}
        if self._continues_text():  # the generation defaults travel with the weights (export-hf writes them)
            config.setdefault("generation", default_generation(self.tokenizer))
        inputs = () if self.path is None else (self.path,)
        return save_checkpoint(path, self.model, self.tokenizer, config, overwrite=overwrite, inputs=inputs)

    # ---- generation ----------------------------------------------------------------------------------
    def generate(
        self,
        prompt: str | list[str],
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        repetition_penalty: float | None = None,
        stop: str | list[str] | None = None,
        seed: int | None = None,
        stream: bool = False,
        use_cache: bool = True,
        generation_config: GenerationConfig | dict | None = None,
        **options,
    ) -> str | list[str] | list[list[str]] | Iterator[str]:
        """Continue `prompt` (a string, or a list of strings: one completion each), with transformers' generation
        options (generate/config.py `GenerationConfig`): max_new_tokens, max_length, min_new_tokens, do_sample,
        temperature, top_k, top_p, num_beams, num_return_sequences, repetition_penalty, no_repeat_ngram_size,
        length_penalty, early_stopping, eos_token_id, stop_strings (or `stop`). An unknown option is a TypeError.

        Options not given come from `generation_config` (a GenerationConfig or a dict), then from the checkpoint's
        defaults (`self.generation_config`: its config.json "generation" key, else greedy with 100 new tokens).
        Greedy unless do_sample=True, as in transformers; lmforge's older spelling still samples: a call giving
        temperature > 0, top_k or top_p without do_sample samples, and temperature 0 is greedy.

        Generation ends at max_new_tokens, at the end-of-sequence token (eos_token_id), or just before the first
        stop string. num_beams > 1 is beam search (a gpt model). With num_return_sequences n > 1 each prompt gets a
        list of n texts (sampled, or the n best beams). With stream=True (one prompt, one sequence, no beams),
        yields text pieces as they are made.
        """
        self.check_generative()
        base = self.generation_config
        if generation_config is not None:
            extra = (
                generation_config
                if isinstance(generation_config, dict)
                else dataclasses.asdict(generation_config)
            )
            base = base.updated({k: v for k, v in extra.items() if v is not None})
        given = dict(
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            repetition_penalty=repetition_penalty,
            stop_strings=stop,
        )
        cfg = base.updated({**given, **options})
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        many = cfg.num_return_sequences > 1
        if stream and (len(prompts) != 1 or not isinstance(prompt, str) or many or cfg.num_beams > 1):
            raise ConfigError("stream=True takes a single prompt, one sequence and no beam search")
        ids = [self.prompt_ids(p) for p in prompts]  # every prompt is checked before any work
        limits = [cfg.new_tokens(len(i)) for i in ids]
        eos = cfg.eos_ids(self.tokenizer)
        generator = seeded_generator(seed, self.device)
        if cfg.num_beams > 1:
            texts = self._beam_generate(prompts, ids, limits, cfg, eos, generator)
        else:
            params = cfg.sampling_params(max(limits), eos)
            if stream:
                return self._stream(prompts[0], ids[0], params, cfg.stops(), generator, use_cache, eos)
            n = cfg.num_return_sequences
            rows = [(p, i, lim) for p, i, lim in zip(prompts, ids, limits) for _ in range(n)]
            flat = self._continue(rows, params, cfg.stops(), generator, use_cache, eos)
            texts = [flat[k : k + n] for k in range(0, len(flat), n)] if many else flat
        return texts[0] if isinstance(prompt, str) else texts

    @property
    def generation_config(self) -> GenerationConfig:
        """The checkpoint's generation defaults (config.json "generation", HF names), or the built-in ones."""
        return GenerationConfig.from_checkpoint(self.config)

    def check_generative(self) -> None:
        """ConfigError saying what to use instead when this model cannot continue a prompt (a fine-tuned task
        model, an encoder-decoder, a masked-LM encoder)."""
        task = TASK_MODELS.get(getattr(self.model.config, "objective", None))
        if task is not None:
            raise ConfigError(
                f"{self.path or 'this model'} is a fine-tuned {task[0]} model: use `lmforge predict "
                f"--task {task[1]}` or lmforge.pipeline('{task[2]}', model=...) instead of generate"
            )
        if self.is_seq2seq():
            raise ConfigError(
                f"{self.path or 'this model'} is an encoder-decoder (seq2seq) that rewrites a source text instead of "
                "continuing a prompt; use transduce()"
            )
        if getattr(self.model.config, "bidirectional", False):
            raise ConfigError(
                f"{self.path or 'this model'} is a {self.config.get('arch', 'bidirectional')} encoder: it fills in "
                "masked tokens but cannot continue text; use fill_mask(), or a gpt/rnn/ngram checkpoint to generate"
            )

    def _continues_text(self) -> bool:
        try:
            self.check_generative()
        except ConfigError:
            return False
        return True

    def is_seq2seq(self) -> bool:
        """Whether this is an encoder-decoder, which rewrites a source text with transduce()."""
        return getattr(self.model.config, "objective", None) == "seq2seq"

    def transduce(
        self,
        source: str | list[str],
        max_new_tokens: int | None = None,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        use_cache: bool = True,
        num_beams: int | None = None,
        length_penalty: float = 1.0,
        early_stopping: bool = True,
        no_repeat_ngram_size: int = 0,
        min_new_tokens: int = 0,
        num_return_sequences: int = 1,
    ) -> str | list[str] | list[list[str]]:
        """The decoder's text for `source` (a string, or a list of strings decoded together as one padded batch).

        For encoder-decoders (arch seq2seq), and for decoder-only models (gpt) fine-tuned with `lmforge finetune
        --task translate|summarize`, which continue the prompt `<|eos|> source separator` their config keeps
        (tasks/translate/prompts.py; prompts of one length are batched together, and a prompt longer than the context
        is a ConfigError). temperature 0 is greedy decoding. The output ends at the end-of-sequence token or after
        max_new_tokens (default and limit: block_size - 1, the decoder positions left after its start token; a
        decoder-only model's output also ends when the context is full). Special tokens are kept, so a
        span-corruption model's answer reads `<|mask|>first span<|mask|>second span`, one span for each mask
        token of the source, in order.

        num_beams switches to beam search (generate/beam.py; length_penalty, early_stopping, no_repeat_ngram_size
        and min_new_tokens belong to it); num_beams=1 is greedy decoding. With num_return_sequences > 1 each source
        gets a list of that many outputs, best first.
        """
        prompt = check_transducer(
            self, "transduce (use generate() to continue a text)"
        )  # None: an encoder-decoder
        block = self.model.config.block_size
        limit = block - 1
        if max_new_tokens is not None and max_new_tokens > limit:
            raise ConfigError(f"max_new_tokens can be at most {limit} for this model (block_size {block})")
        params = SamplingParams(
            limit if max_new_tokens is None else max_new_tokens, temperature, top_k, top_p
        )
        params.validate()
        sources = [source] if isinstance(source, str) else list(source)
        if not sources:
            raise ConfigError("transduce needs at least one source text")
        beams = (
            None
            if num_beams is None
            else BeamParams(
                num_beams,
                params.max_new_tokens,
                length_penalty,
                early_stopping,
                no_repeat_ngram_size,
                min_new_tokens,
                num_return_sequences,
            )
        )
        if beams is None and num_return_sequences != 1:
            raise ConfigError("num_return_sequences > 1 needs beam search; give num_beams")
        generator = seeded_generator(seed, self.device)
        if prompt is not None:  # a decoder-only model continues each source's prompt
            texts = self._prompted_texts(
                [prompt.prompt_ids(self.tokenizer, s) for s in sources], params, beams, generator, use_cache
            )
            return texts[0] if isinstance(source, str) else texts
        # every source is checked before any work
        ids = [encode_source(self.tokenizer, s, self.model.config, cut=False) for s in sources]
        for i in ids:
            if not 0 < len(i) <= block:
                raise ConfigError(f"a source is {len(i)} tokens long; the model reads 1 to {block} tokens")
        src = torch.full(
            (len(ids), max(map(len, ids), default=0)), self.tokenizer.pad_id or 0, dtype=torch.long
        )
        src_mask = torch.zeros(src.shape, dtype=torch.bool)
        for row, i in enumerate(ids):
            src[row, : len(i)], src_mask[row, : len(i)] = torch.tensor(i), True
        if beams is not None:
            texts = self._beam_texts(src, src_mask, beams)
            return texts[0] if isinstance(source, str) else texts
        steps = decode_tokens(
            self.model,
            src.to(self.device),
            src_mask.to(self.device),
            decoder_start_id(self.tokenizer),
            params,
            generator,
            use_cache,
        )
        texts = [
            self.tokenizer.decode(o, skip_special_tokens=False)
            for o in tokens_until(steps, len(ids), self.tokenizer.eos_id)
        ]
        return texts[0] if isinstance(source, str) else texts

    def _prompted_texts(
        self,
        prompts: list[list[int]],
        params: SamplingParams,
        beams: BeamParams | None,
        generator,
        use_cache: bool,
    ) -> list[str] | list[list[str]]:
        if beams is not None:
            return self._hypothesis_texts(
                beam_search_prompts(self.model, prompts, self.tokenizer.eos_id, beams),
                beams.num_return_sequences,
            )
        out = continue_prompts(self.model, prompts, self.tokenizer.eos_id, params, generator, use_cache)
        return [self.tokenizer.decode(o, skip_special_tokens=False) for o in out]

    def _beam_texts(self, src: torch.Tensor, src_mask: torch.Tensor, params) -> list[str] | list[list[str]]:
        if self.tokenizer.eos_id is None:
            raise ConfigError("beam search needs a tokenizer with an <|eos|> token")
        beams = beam_search(
            self.model,
            src.to(self.device),
            src_mask.to(self.device),
            decoder_start_id(self.tokenizer),
            self.tokenizer.eos_id,
            params,
        )
        return self._hypothesis_texts(beams, params.num_return_sequences)

    def _hypothesis_texts(self, beams, n: int) -> list[str] | list[list[str]]:
        """Each source's n best hypotheses as text (a string each when n is 1)."""
        texts = [
            [self.tokenizer.decode(h.tokens, skip_special_tokens=False) for h in hyps[:n]] for hyps in beams
        ]
        return [t[0] for t in texts] if n == 1 else texts

    def fill_mask(self, text: str, top_k: int = 5) -> list[list[tuple[str, float]]]:
        """The top_k (token, probability) guesses for each mask token in `text` (a masked-LM encoder only)."""
        _, guesses = self.mask_guesses(text, top_k)
        return [[(self.tokenizer.decode([i]), p) for i, p in g] for _, g in guesses]

    def mask_guesses(
        self, text: str, top_k: int = 5
    ) -> tuple[list[int], list[tuple[int, list[tuple[int, float]]]]]:
        """The ids the model reads for `text` and, for each mask token among them, (its position, the top_k
        (token id, probability) guesses); a masked-LM encoder only."""
        if not getattr(self.model.config, "bidirectional", False):
            raise ConfigError(
                "fill_mask needs a masked-LM encoder (arch bert); use generate() with this model"
            )
        mask = (
            self.tokenizer.id_to_token(self.tokenizer.mask_id) if self.tokenizer.mask_id is not None else None
        )
        if mask is None or mask not in text:
            raise ConfigError(
                f"the text has no mask token; write {mask or '<|mask|>'} where a token is missing"
            )
        ids = self.tokenizer.encode(text)
        if self.tokenizer.bos_id is not None:
            ids = [self.tokenizer.bos_id] + ids
        if len(ids) > self.model.config.block_size:
            raise ConfigError(
                f"the text is {len(ids)} tokens long but the model's context is {self.model.config.block_size}"
            )
        x = torch.tensor([ids], device=self.device)
        with torch.no_grad():
            probs = self.model(x)[0].float().softmax(-1)
        out = []
        for pos in (x[0] == self.tokenizer.mask_id).nonzero().flatten().tolist():
            p, idx = probs[pos].topk(min(top_k, probs.shape[-1]))
            out.append((pos, list(zip(idx.tolist(), p.tolist()))))
        return ids, out

    def prompt_ids(self, prompt: str) -> list[int]:
        """The ids generate() continues for `prompt` (after the end-of-sequence token, as documents follow one in
        training); ConfigError when they do not fit the model's context."""
        ids = self.tokenizer.encode(prompt)
        eos = self.tokenizer.eos_id
        # Documents follow an end-of-sequence token in training, so it is the natural "start of text" context.
        if eos is not None:
            ids = [eos] + ids
        block = self.model.config.block_size
        if len(ids) > block:
            raise ConfigError(
                f"the prompt is {len(ids)} tokens long but the model's context is {block}; shorten the prompt"
            )
        return ids

    def _continue(self, rows, params: SamplingParams, stops, generator, use_cache: bool, eos) -> list[str]:
        """The texts of (prompt, ids, max new tokens) rows, sampled or greedy: one left-padded batch while every
        row fits the context (past it, each row would slide its window at its own step), else one at a time."""
        fits = max(len(i) for _, i, _ in rows) + params.max_new_tokens <= self.model.config.block_size
        if not (hasattr(self.model, "new_cache") and len(rows) > 1 and fits):
            return [
                "".join(
                    self._stream(p, i, replace(params, max_new_tokens=lim), stops, generator, use_cache, eos)
                )
                for p, i, lim in rows
            ]
        ids = [i for _, i, _ in rows]
        width = max(map(len, ids))
        pad = ids[0][0]  # any id: padded positions are masked out
        x = torch.tensor([[pad] * (width - len(i)) + i for i in ids], dtype=torch.long, device=self.device)
        mask = torch.tensor([[False] * (width - len(i)) + [True] * len(i) for i in ids], device=self.device)
        steps = generate_tokens(
            self.model, x, params, generator, use_cache, prompt_mask=mask, compile=self.compile_decoding
        )
        out = tokens_until(steps, len(rows), eos)
        return [
            "".join(text_pieces(self.tokenizer, p, o[:lim], stops, eos)) for (p, _, lim), o in zip(rows, out)
        ]

    def _stream(
        self, prompt: str, ids: list[int], params, stops, generator, use_cache: bool, eos
    ) -> Iterator[str]:
        """Text pieces of one continuation as its tokens arrive: up to the end-of-sequence token or a stop string
        (generate/text.py, the same rules as the server's)."""
        x = torch.tensor([ids], dtype=torch.long, device=self.device)
        steps = generate_tokens(self.model, x, params, generator, use_cache, compile=self.compile_decoding)
        return text_pieces(self.tokenizer, prompt, (int(tok[0]) for tok in steps), stops, eos)

    def _beam_generate(self, prompts, ids, limits, cfg: GenerationConfig, eos, generator=None) -> list:
        """Beam search over each prompt's continuations (a gpt model: it needs the KV cache); `generator` draws the
        candidates of beam sampling (do_sample)."""
        if not hasattr(self.model, "new_cache"):
            raise ConfigError(f"beam search needs a gpt model; this is a {self.config.get('arch')} model")
        if len(eos) != 1:
            raise ConfigError("beam search ends at one end-of-sequence id; give one eos_token_id")
        texts: list = [None] * len(prompts)
        for limit in sorted(set(limits)):  # max_length gives each prompt length its own limit
            rows = [r for r, lim in enumerate(limits) if lim == limit]
            beams = beam_search_prompts(
                self.model, [ids[r] for r in rows], eos[0], cfg.beam_params(limit), generator=generator
            )
            for r, hyps in zip(rows, beams):
                n = cfg.num_return_sequences
                outs = [
                    "".join(text_pieces(self.tokenizer, prompts[r], h.tokens, cfg.stops(), eos))
                    for h in hyps[:n]
                ]
                texts[r] = outs if n > 1 else outs[0]
        return texts

    # ---- scoring -------------------------------------------------------------------------------------
    @torch.no_grad()
    def token_logprobs(
        self, rows: list[list[int]], top: int = 0, batch_size: int = 16
    ) -> list[tuple[list[float], list[bool], list[list[tuple[int, float]]]]]:
        """For each row of token ids (1 to block_size + 1 of them: the model reads all but the last), the
        log-probability of every token after the first given the tokens before it, whether it was the model's most
        likely token there, and (top > 0) the `top` most likely tokens there as (id, logprob). Rows are scored in
        right-padded batches (a causal model's earlier positions never see the padding). The scores
        lm-evaluation-harness (lmforge.harness) and the server's echo use."""
        self.check_generative()
        block = self.model.config.block_size
        for r in rows:
            if not 1 <= len(r) <= block + 1:
                raise ConfigError(
                    f"a sequence of {len(r)} tokens cannot be scored; the model reads 1 to {block + 1}"
                )
        out: list = [([], [], [])] * len(rows)
        # Longest first, so that a batch holds similar lengths and little padding.
        order = [i for i in sorted(range(len(rows)), key=lambda i: -len(rows[i])) if len(rows[i]) > 1]
        with eval_mode(self.model):
            for first in range(0, len(order), batch_size):
                chunk = order[first : first + batch_size]
                width = len(rows[chunk[0]])
                x = torch.tensor(
                    [rows[i] + [rows[i][0]] * (width - len(rows[i])) for i in chunk], device=self.device
                )
                with autocast(self.device, self.amp_dtype):
                    logits = self.model(x[:, :-1])
                logp = logits.float().log_softmax(-1)
                chosen = logp.gather(2, x[:, 1:, None])[..., 0]
                greedy = logp.argmax(-1) == x[:, 1:]
                tops = logp.topk(min(top, logp.shape[-1]), dim=-1) if top else None
                for b, i in enumerate(chunk):
                    n = len(rows[i]) - 1
                    alts = []
                    if tops is not None:
                        alts = [
                            list(zip(t, v))
                            for t, v in zip(tops.indices[b, :n].tolist(), tops.values[b, :n].tolist())
                        ]
                    out[i] = (chosen[b, :n].tolist(), greedy[b, :n].tolist(), alts)
        return out

    # ---- evaluation and facts ------------------------------------------------------------------------
    def evaluate(
        self,
        data: str | os.PathLike,
        max_tokens: int | None = None,
        batch_size: int = 8,
        split: str = "val",
        doc_split: str | None = None,
    ) -> dict:
        """Loss, perplexity and bits per byte on a prepared data directory's `split` (val, train, or test) or a
        text file, read as the run's data was prepared unless `doc_split` says otherwise (lmforge.evaluate)."""
        return evaluate(
            self, data, split=split, max_tokens=max_tokens, batch_size=batch_size, doc_split=doc_split
        )

    def num_params(self) -> int:
        return self.model.num_params()

    def __repr__(self) -> str:
        return f"LM({self.path}, {self.num_params():,} params, {self.tokenizer!r})"


def load(
    path: str | os.PathLike, device: str = "auto", compile: str | bool = "auto", dtype: str | None = None
) -> LM:
    """Load a checkpoint folder or a run directory (its latest checkpoint) as an LM (`compile`, `dtype`: see
    LM.from_pretrained)."""
    return LM.from_pretrained(path, device=device, compile=compile, dtype=dtype)


# ---- pipelines: Hugging Face's pipeline() tasks that need an LM (tasks/pipeline.py has the fine-tuned ones) ----
class TextGenerationPipeline:
    """prompt(s) -> [{"generated_text"}] per prompt (one dict per returned sequence), as transformers'
    "text-generation"; keyword arguments are LM.generate's (transformers' names), return_full_text as
    transformers' (True: the prompt and its continuation)."""

    def __init__(self, lm: LM, **defaults):
        self.lm, self.defaults = lm, defaults
        lm.check_generative()

    def __call__(self, text_inputs: str | list[str], return_full_text: bool = True, **generate_kwargs):
        single = isinstance(text_inputs, str)
        prompts = [text_inputs] if single else list(text_inputs)
        outs = self.lm.generate(prompts, **{**self.defaults, **generate_kwargs})
        result = [
            [
                {"generated_text": prompt + s if return_full_text else s}
                for s in (o if isinstance(o, list) else [o])
            ]
            for prompt, o in zip(prompts, outs)
        ]
        return result[0] if single else result


class FillMaskPipeline:
    """text with mask token(s) -> [{"score", "token", "token_str", "sequence"}] (top_k guesses; a list of such
    lists with several masks), as transformers' "fill-mask"."""

    def __init__(self, lm: LM, top_k: int = 5):
        self.lm, self.top_k = lm, top_k

    def __call__(self, inputs: str | list[str], top_k: int | None = None):
        if not isinstance(inputs, str):
            return [self(text, top_k) for text in inputs]
        ids, guesses = self.lm.mask_guesses(inputs, top_k or self.top_k)
        tok = self.lm.tokenizer
        out = []
        for pos, options in guesses:
            rows = []
            for token, score in options:
                filled = ids[:pos] + [token] + ids[pos + 1 :]
                rows.append(
                    {
                        "score": score,
                        "token": token,
                        "token_str": tok.decode([token]),
                        "sequence": tok.decode(filled),
                    }
                )
            out.append(rows)
        return out[0] if len(out) == 1 else out


class FeatureExtractionPipeline:
    """text(s) -> the final hidden state of every token, as nested lists [1][tokens][hidden] per text, as
    transformers' "feature-extraction" (a BERT-style text is framed [bos] text [eos], a GPT's text [eos], as
    their classifiers read them)."""

    def __init__(self, lm: LM):
        from lmforge.models.bert import Bert
        from lmforge.models.gpt import GPT
        from lmforge.tasks.classify.encoding import TextEncoder

        if not isinstance(lm.model, (GPT, Bert)):
            raise ConfigError("feature-extraction needs a gpt or bert-style checkpoint")
        self.lm = lm
        backbone = "bert" if isinstance(lm.model, Bert) else "gpt"
        self.encoder = TextEncoder(lm.tokenizer, backbone, lm.model.config.block_size)

    def __call__(self, inputs: str | list[str]):
        if not isinstance(inputs, str):
            return [self(text) for text in inputs]
        ids, _ = self.encoder(inputs)
        with torch.inference_mode(), eval_mode(self.lm.model):
            hidden = self.lm.model.encode(torch.tensor([ids], device=self.lm.device))
        return hidden.float().cpu().tolist()


class TransducePipeline:
    """source text(s) -> [{"translation_text"}] or [{"summary_text"}], one per source, as transformers'
    "translation" and "summarization"; keyword arguments are LM.transduce's (num_beams, max_new_tokens, ...)."""

    def __init__(self, lm: LM, key: str, **defaults):
        self.lm, self.key, self.defaults = lm, key, defaults

    def __call__(self, inputs: str | list[str], **kwargs):
        sources = [inputs] if isinstance(inputs, str) else list(inputs)
        texts = self.lm.transduce(sources, **{**self.defaults, **kwargs})
        tok = self.lm.tokenizer
        # transduce keeps special tokens (a span-corruption model's answer is made of them); text here has none.
        return [{self.key: tok.decode(tok.encode(t if isinstance(t, str) else t[0]))} for t in texts]


LM_PIPELINES = {
    "text-generation": TextGenerationPipeline,
    "fill-mask": FillMaskPipeline,
    "feature-extraction": FeatureExtractionPipeline,
    "translation": lambda lm, **kw: TransducePipeline(lm, "translation_text", **kw),
    "summarization": lambda lm, **kw: TransducePipeline(lm, "summary_text", **kw),
}


def pipeline(task: str, model: str | os.PathLike | LM, device: str = "auto", **kw):
    """A prediction function for `task` from a checkpoint (or an LM), in the manner of transformers' pipeline():
    "text-generation", "fill-mask", "feature-extraction", "translation" (also "translation_xx_to_yy"),
    "summarization", and the fine-tuned tasks of tasks/pipeline.py ("sentiment-analysis", "text-classification",
    "nli", "ner" / "token-classification", "question-answering")."""
    from lmforge.tasks.pipeline import TASK_ALIASES
    from lmforge.tasks.pipeline import pipeline as task_pipeline

    name = "translation" if task.startswith("translation_") else task
    if name not in LM_PIPELINES:
        if task not in TASK_ALIASES:
            raise ConfigError(
                f"unknown pipeline task {task!r}; choose one of {', '.join([*LM_PIPELINES, *TASK_ALIASES])}"
            )
        return task_pipeline(task, model.path if isinstance(model, LM) else model, device=device, **kw)
    if not isinstance(model, LM):
        if not Path(model).exists():
            raise ConfigError(f"{model} does not exist; give a checkpoint folder or run directory")
        model = load(model, device=device)
    return LM_PIPELINES[name](model, **kw)
