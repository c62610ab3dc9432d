"""`load(CKPT)` → an `LM`: a model with its tokenizer, ready to generate text and be evaluated."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import torch

from lmforge.checkpoint import load_checkpoint, resolve_checkpoint, save_checkpoint
from lmforge.device import autocast_dtype, pick_device, use_compile
from lmforge.errors import ConfigError
from lmforge.eval.perplexity import evaluate
from lmforge.generate.beam import BeamParams, beam_search, beam_search_prompts, continue_prompts, tokens_until
from lmforge.generate.sampling import SamplingParams, generate_tokens, seeded_generator
from lmforge.generate.text import text_pieces
from lmforge.generate.transduce import decode_tokens
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
    ):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.config = config
        self.path = path
        self.device = next(model.parameters(), torch.empty(0)).device  # table models have no parameters
        self.amp_dtype = autocast_dtype(self.device, "auto")
        # Cached decoding's one-token steps through torch.compile (generate/sampling.py DecodeStep).
        self.compile_decoding = use_compile(compile, self.device)

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike, device: str = "auto", compile: str | bool = "auto"
    ) -> LM:
        """`compile`: torch.compile the decoding step (auto: on CUDA only; true also pays off on a CPU for long
        generations and servers, after a compile of tens of seconds)."""
        ckpt = resolve_checkpoint(path)
        model, tokenizer, config = load_checkpoint(ckpt, pick_device(device))
        return cls(model, tokenizer, config, ckpt, compile)

    def save_pretrained(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write a checkpoint folder (weights, tokenizer, config; no training state). An existing non-empty `path`
        is replaced only with overwrite=True, and never the folder this model was loaded from (or one holding it)."""
        config = {k: v for k, v in self.config.items() if k not in ("lmforge_version", "tokenizer")}
        inputs = () if self.path is None else (self.path,)
        return save_checkpoint(path, self.model, self.tokenizer, config, overwrite=overwrite, inputs=inputs)

    # ---- generation ----------------------------------------------------------------------------------
    def generate(
        self,
        prompt: str | list[str],
        max_new_tokens: int = 100,
        temperature: float = 0.8,
        top_k: int | None = None,
        top_p: float | None = None,
        repetition_penalty: float = 1.0,
        stop: str | list[str] | None = None,
        seed: int | None = None,
        stream: bool = False,
        use_cache: bool = True,
    ) -> str | list[str] | Iterator[str]:
        """Continue `prompt` (a string, or a list of strings: one completion each).

        temperature 0 is greedy decoding. Generation ends at max_new_tokens, at the end-of-sequence token, or
        just before the first stop string. With stream=True (one prompt), yields text pieces as they are made.
        """
        self.check_generative()
        params = SamplingParams(max_new_tokens, temperature, top_k, top_p, repetition_penalty)
        params.validate()
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if isinstance(prompt, list):
            if stream:
                raise ConfigError("stream=True takes a single prompt")
            ids = [self.prompt_ids(p) for p in prompt]  # every prompt is checked before any work
            # Batched while every row fits the context: past it, each row would slide its window at its own step.
            fits = max(map(len, ids)) + max_new_tokens <= self.model.config.block_size
            if hasattr(self.model, "new_cache") and len(ids) > 1 and fits:
                return self._generate_batch(prompt, ids, params, stops, seed, use_cache)
            return ["".join(self._stream(p, i, params, stops, seed, use_cache)) for p, i in zip(prompt, ids)]
        # Checked here, not inside the generator, so a bad prompt fails before anything is streamed.
        pieces = self._stream(prompt, self.prompt_ids(prompt), params, stops, seed, use_cache)
        return pieces if stream else "".join(pieces)

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
        ids = [self.tokenizer.encode(s) for s in sources]  # every source is checked before any work
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
            out.append([(self.tokenizer.decode([i]), float(q)) for i, q in zip(idx.tolist(), p.tolist())])
        return out

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

    def _generator(self, seed: int | None) -> torch.Generator | None:
        return seeded_generator(seed, self.device)

    def _stream(
        self,
        prompt: str,
        ids: list[int],
        params: SamplingParams,
        stops: list[str],
        seed: int | None,
        use_cache: bool,
    ) -> Iterator[str]:
        x = torch.tensor([ids], dtype=torch.long, device=self.device)
        steps = generate_tokens(
            self.model, x, params, self._generator(seed), use_cache, compile=self.compile_decoding
        )
        tokens = (int(tok[0]) for tok in steps)
        return self._pieces(prompt, tokens, stops)

    def _generate_batch(
        self,
        prompts: list[str],
        ids: list[list[int]],
        params: SamplingParams,
        stops: list[str],
        seed: int | None,
        use_cache: bool,
    ) -> list[str]:
        """Continue several prompts in one batch, left-padded to one length: one forward pass per step for all.
        Greedy results equal one-at-a-time generation; sampled ones are reproducible with a seed."""
        width = max(len(i) for i in ids)
        pad = ids[0][0]  # any id: padded positions are masked out
        x = torch.tensor([[pad] * (width - len(i)) + i for i in ids], dtype=torch.long, device=self.device)
        mask = torch.tensor([[False] * (width - len(i)) + [True] * len(i) for i in ids], device=self.device)
        rows: list[list[int]] = [[] for _ in ids]
        done = [False] * len(ids)
        eos = self.tokenizer.eos_id
        for step in generate_tokens(
            self.model,
            x,
            params,
            self._generator(seed),
            use_cache,
            prompt_mask=mask,
            compile=self.compile_decoding,
        ):
            for r, t in enumerate(step.tolist()):
                if not done[r]:
                    done[r] = t == eos
                    rows[r].append(t)
            if all(done):
                break
        return ["".join(self._pieces(p, iter(r), stops)) for p, r in zip(prompts, rows)]

    def _pieces(self, prompt: str, tokens: Iterator[int], stops: list[str]) -> Iterator[str]:
        """Text pieces of a continuation as its tokens arrive: up to the end-of-sequence token or a stop string
        (generate/text.py, the same rules as the server's)."""
        return text_pieces(self.tokenizer, prompt, tokens, stops)

    # ---- evaluation and facts ------------------------------------------------------------------------
    def evaluate(self, data: str | os.PathLike, max_tokens: int | None = None, batch_size: int = 8) -> dict:
        """Loss, perplexity and bits per byte on a prepared data directory (val split) or a text file."""
        return evaluate(self, data, max_tokens=max_tokens, batch_size=batch_size)

    def num_params(self) -> int:
        return self.model.num_params()

    def __repr__(self) -> str:
        return f"LM({self.path}, {self.num_params():,} params, {self.tokenizer!r})"


def load(path: str | os.PathLike, device: str = "auto", compile: str | bool = "auto") -> LM:
    """Load a checkpoint folder or a run directory (its latest checkpoint) as an LM (`compile`: see
    LM.from_pretrained)."""
    return LM.from_pretrained(path, device=device, compile=compile)
