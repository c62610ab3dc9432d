"""generate/text.py: token ids become text pieces as they arrive (the rules LM.generate and the server share)."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from lmforge.generate.sampling import SamplingParams
from lmforge.generate.text import TextStream, text_pieces
from lmforge.serve.batching import GenerateJob, decode_batch

EOS = 0


class ByteTokenizer:
    """Token i is the bytes PIECES[i] (some a part of a UTF-8 character); decodes as a byte-level BPE does."""

    PIECES = [b"", b"a", b"b", b" ", b"\n", b"Us", b"er:", "é".encode()[:1], "é".encode()[1:], b"cat", b"sat"]

    def __init__(self, kind: str = "bpe"):
        self.kind, self.eos_id = kind, EOS

    def decode(self, ids: list[int]) -> str:
        if self.kind == "word":
            return " ".join(self.PIECES[i].decode() for i in ids)
        return b"".join(self.PIECES[i] for i in ids).decode("utf-8", errors="replace")


A, B, SPACE, NL, US, ER, E1, E2, CAT, SAT = range(1, 11)


def pushed(stream: TextStream, tokens: list[int]) -> list[str]:
    return [stream.push(t) for t in tokens]


def test_pieces_add_up_to_the_text_and_end_at_the_end_of_sequence_token():
    stream = TextStream(ByteTokenizer())
    assert pushed(stream, [A, B, SPACE, EOS, A]) == ["a", "b", " ", "", ""]
    assert stream.stopped and stream.text == "ab " and stream.finish() == ""


def test_an_unfinished_utf8_character_is_held_back_until_it_is_complete():
    stream = TextStream(ByteTokenizer())
    assert pushed(stream, [A, E1, E2, B]) == ["a", "", "é", "b"]
    stream = TextStream(ByteTokenizer())
    assert pushed(stream, [A, E1]) == ["a", ""]
    assert stream.finish() == "\ufffd" and stream.text == "a\ufffd"  # what is left is given out at the end


def test_a_stop_string_ends_the_text_before_it_and_its_start_is_held_back():
    stream = TextStream(ByteTokenizer(), stops=["\nUser:"])
    assert pushed(stream, [A, B, A, B, A, B, NL, US]) == ["", "", "", "", "", "a", "b", "ab"]
    assert stream.push(ER) == "ab"  # the rest before the stop
    assert stream.stopped and stream.text == "ababab" and stream.push(A) == "" and stream.finish() == ""


def test_a_text_shorter_than_the_longest_stop_gives_out_nothing_of_the_stop():
    # "a\nUs" is shorter than "\nUser:" minus one: nothing after "a" may be given out before the stop shows.
    stream = TextStream(ByteTokenizer(), stops=["\nUser:"])
    assert pushed(stream, [A, NL, US, ER]) == ["", "", "", "a"]
    assert stream.text == "a" and stream.stopped


def test_held_back_text_is_given_out_by_finish_when_no_stop_came():
    stream = TextStream(ByteTokenizer(), stops=["\nUser:"])
    assert "".join(pushed(stream, [A, NL, US])) == ""
    assert stream.finish() == "a\nUs" and not stream.stopped


def test_a_word_tokenizer_continues_the_prompt_after_a_space():
    tok = ByteTokenizer("word")
    assert "".join(text_pieces(tok, "the", [CAT, SAT, EOS], [])) == " cat sat"
    assert "".join(text_pieces(tok, "the ", [CAT, SAT], [])) == "cat sat"
    assert "".join(text_pieces(tok, "", [CAT], [])) == "cat"


def test_text_pieces_takes_no_token_after_the_text_has_ended():
    taken = []

    def tokens():
        for t in [A, NL, US, ER, B, B]:
            taken.append(t)
            yield t

    assert list(text_pieces(ByteTokenizer(), "", tokens(), ["\nUser:"])) == ["a"]
    assert taken == [A, NL, US, ER]


class Scripted(torch.nn.Module):
    """A model that continues any prompt of `prompt_len` tokens with `script`, greedily."""

    def __init__(self, script: list[int], prompt_len: int):
        super().__init__()
        self.script, self.prompt_len, self.config = script, prompt_len, SimpleNamespace(block_size=64)

    def next_token_logits(self, seq: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(seq.shape[0], len(ByteTokenizer.PIECES))
        logits[:, self.script[seq.shape[1] - self.prompt_len]] = 1.0
        return logits


def test_the_server_reads_a_continuation_as_the_library_does():
    tok = ByteTokenizer()
    cases = [
        ([A, NL, US, ER, B], ["\nUser:"]),
        ([A, E1, E2, B, EOS, A], []),
        ([A, E1], ["b"]),
        ([A, B, A, B, A, B, NL, US, A], ["\nUser:", "\nSystem:"]),
    ]
    for script, stops in cases:
        lm = SimpleNamespace(
            model=Scripted(script, 2), tokenizer=tok, device=torch.device("cpu"), compile_decoding=False
        )
        pieces: list[str] = []
        job = GenerateJob(
            "", [EOS, B], SamplingParams(len(script), temperature=0.0), stops, on_piece=pieces.append
        )
        (completion,) = decode_batch(lm, [job])
        expected = list(text_pieces(tok, "", script, stops))
        assert pieces == expected and completion.text == "".join(expected), (script, stops)
