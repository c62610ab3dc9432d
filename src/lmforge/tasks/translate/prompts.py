"""Paired text (translation, summarization) for a decoder-only model (a GPT): one sequence per pair,

    <|eos|> source SEPARATOR target <|eos|>

with the loss on the target and its final end-of-sequence token only (the prompt's labels are IGNORE_INDEX). The
leading end-of-sequence token is the "start of text" every prompt gets (as in LM.generate and chat fine-tuning);
the separator is the first of SEPARATORS that the tokenizer encodes and decodes back unchanged (the round-trip test
that picks chat role markers), else the end-of-sequence token itself, which every tokenizer spells. A pair longer than the
context loses the end of its source, never its target. The format is kept in the checkpoint's config.json
("data.pair_prompt"), so `lmforge evaluate|predict --task translate|summarize` and LM.transduce rebuild it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from lmforge.errors import ConfigError, DataError
from lmforge.generate.beam import BeamParams, beam_search_prompts, continue_prompts
from lmforge.generate.sampling import SamplingParams
from lmforge.models.modes import eval_mode
from lmforge.tasks.translate.pairs import Pair
from lmforge.tokenizers import Tokenizer
from lmforge.train.labels import IGNORE_INDEX

SEPARATORS = ("\n=>\n", "\n")  # most explicit first
CONFIG_KEY = "pair_prompt"  # under the checkpoint config's "data"


@dataclass(frozen=True)
class PairPrompt:
    separator: str
    # Tokens an output may take, its end-of-sequence included: the longest training target. At evaluation a long
    # source is cut so that its prompt leaves this much of the context free.
    target_room: int = 0

    @classmethod
    def for_tokenizer(cls, tokenizer: Tokenizer, target_room: int = 0) -> PairPrompt:
        if tokenizer.eos_id is None:
            raise ConfigError("the tokenizer has no end-of-sequence token to start a prompt and end a target")
        end = tokenizer.id_to_token(tokenizer.eos_id)
        return cls(next((s for s in SEPARATORS if tokenizer.round_trips(s)), end), target_room)

    @classmethod
    def from_config(cls, config: dict) -> PairPrompt | None:
        """The format a decoder-only translate/summarize fine-tune stored in its config; None for other models."""
        data = config.get("data")
        spec = data.get(CONFIG_KEY) if isinstance(data, dict) else None
        return cls(**spec) if spec else None

    def to_dict(self) -> dict:
        return asdict(self)

    def prompt_ids(self, tokenizer: Tokenizer, source: str, budget: int | None = None) -> list[int]:
        """`<|eos|> source separator`; with a budget, the source loses its end until the prompt takes at most
        `budget` tokens (one source token at least: a smaller budget is a ConfigError)."""
        sep = tokenizer.encode(self.separator)
        src = tokenizer.encode(source) or [tokenizer.unk_id or 0]
        if budget is not None:
            if budget < len(sep) + 2:
                raise ConfigError(
                    f"a prompt needs at least {len(sep) + 2} tokens of context, {budget} are left"
                )
            src = src[: budget - 1 - len(sep)]
        return [tokenizer.eos_id, *src, *sep]

    def training_rows(
        self, tokenizer: Tokenizer, pairs: list[Pair], block_size: int, where: str
    ) -> list[tuple[list[int], list[int]]]:
        """(input ids, labels) per pair: the labels are the next tokens over the target and its end-of-sequence
        token and IGNORE_INDEX over the prompt. A source is cut to fit the block; a target that leaves no room for
        one source token is a DataError naming the pair."""
        rows = []
        least = len(tokenizer.encode(self.separator)) + 2  # <|eos|>, one source token, the separator
        for n, pair in enumerate(pairs, 1):
            target = [*tokenizer.encode(pair.target), tokenizer.eos_id]
            budget = block_size + 1 - len(target)  # inputs and labels are the sequence shifted by one
            if budget < least:
                raise DataError(
                    f"{where}: pair {n} has a target of {len(target) - 1} tokens; with its end-of-sequence token and "
                    f"a prompt of at least {least} tokens it does not fit the model's context of {block_size} "
                    "tokens; shorten or remove it"
                )
            prompt = self.prompt_ids(tokenizer, pair.source, budget)
            rows.append(([*prompt, *target][:-1], [IGNORE_INDEX] * (len(prompt) - 1) + target))
        return rows

    def decode_texts(
        self,
        model,
        tokenizer: Tokenizer,
        sources: list[str],
        num_beams: int = 1,
        batch_size: int = 32,
        max_new_tokens: int | None = None,
        length_penalty: float = 1.0,
    ) -> list[str]:
        """The model's output text for each source (special tokens dropped), greedy or by beam search. A long source
        is cut so that its prompt leaves `target_room` tokens of context; an output ends at its end-of-sequence
        token, after max_new_tokens, or when the context is full."""
        block = model.config.block_size
        least = len(tokenizer.encode(self.separator)) + 2
        budget = max(block + 1 - max(self.target_room, 1), least)
        prompts = [self.prompt_ids(tokenizer, s, budget) for s in sources]
        limit = block if max_new_tokens is None else max_new_tokens
        with eval_mode(model):
            if num_beams > 1:
                beams = beam_search_prompts(
                    model, prompts, tokenizer.eos_id, BeamParams(num_beams, limit, length_penalty), batch_size
                )
                out = [hyps[0].tokens for hyps in beams]
            else:
                out = continue_prompts(
                    model,
                    prompts,
                    tokenizer.eos_id,
                    SamplingParams(limit, temperature=0.0),
                    batch_size=batch_size,
                )
        return [tokenizer.decode(o) for o in out]
