"""Token ids to text as they arrive: `TextStream` (and `text_pieces` over an iterable of ids).

The one implementation of what text of a continuation is ready to show, used by `LM.generate` (lm.py, streamed or
not, one prompt or a batch) and by `lmforge serve`'s batcher (serve/batching.py), so a completion and a served
completion read the same. The rules:

- the text ends at the end-of-sequence token or just before the first stop string (neither is part of it);
- an unfinished UTF-8 sequence (decoded as U+FFFD) is held back until the tokens that finish it arrive;
- with stop strings, the last (longest stop - 1) characters are held back too: they may be the start of a stop;
- a word-level tokenizer decodes words joined by spaces, so its continuation of a prompt that does not end in
  whitespace starts with a space.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lmforge.tokenizers import Tokenizer


class TextStream:
    """The text of one continuation of `prompt`, piece by piece: `push(token)` for each new token id, then
    `finish()` when no more come (max tokens reached).

    Both return the text newly ready ("" while it is held back); `text` is all of it given out so far. `stopped`
    turns true when the end-of-sequence token or a stop string ends the text: later tokens are ignored.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        prompt: str = "",
        stops: Sequence[str] = (),
        eos_ids: Sequence[int] | None = None,
    ):
        self.tokenizer = tokenizer
        # The ids that end the text (None: the tokenizer's end-of-sequence token).
        self.eos_ids = set((tokenizer.eos_id,) if eos_ids is None else eos_ids)
        self.stops = list(stops)
        # Word-level tokenizers decode words joined by spaces: the continuation needs one after the prompt.
        self.sep = " " if tokenizer.kind == "word" and prompt and not prompt[-1].isspace() else ""
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.tokens: list[int] = []  # the continuation's tokens (without the end-of-sequence token)
        self.text = ""  # the text given out so far
        self.stopped = False

    def push(self, token: int) -> str:
        """The text that `token` makes ready."""
        if self.stopped:
            return ""
        if token in self.eos_ids:
            self.stopped = True
            return self._rest()
        self.tokens.append(token)
        text = self.sep + self.tokenizer.decode(self.tokens)
        cut = min((i for i in (text.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            return self._advance(text[:cut])
        # Hold back an unfinished UTF-8 sequence and anything that may be the start of a stop string.
        ready = max(len(text) - self.hold, 0) if self.stops else len(text)
        while ready > len(self.text) and text[ready - 1] == "\ufffd":
            ready -= 1
        return self._advance(text[:ready])

    def finish(self) -> str:
        """The text held back so far, once no more tokens come ("" after a stop)."""
        return "" if self.stopped else self._rest()

    def _rest(self) -> str:
        return self._advance(self.sep + self.tokenizer.decode(self.tokens) if self.tokens else "")

    def _advance(self, text: str) -> str:
        if len(text) <= len(self.text):
            return ""
        piece = text[len(self.text) :]
        self.text = text
        return piece


def text_pieces(
    tokenizer: Tokenizer,
    prompt: str,
    tokens: Iterable[int],
    stops: Sequence[str] = (),
    eos_ids: Sequence[int] | None = None,
) -> Iterator[str]:
    """The non-empty pieces of a `TextStream` as `tokens` arrive; it takes no more tokens once the text has ended."""
    stream = TextStream(tokenizer, prompt, stops, eos_ids)
    for token in tokens:
        if piece := stream.push(token):
            yield piece
        if stream.stopped:
            return
    if piece := stream.finish():
        yield piece
