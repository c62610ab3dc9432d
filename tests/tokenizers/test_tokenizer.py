"""The Tokenizer wrapper: round trips, special tokens, vocabulary sizes, fingerprints and errors."""

from __future__ import annotations

import json

import pytest
from tokenizers import Tokenizer as HFTokenizer

from lmforge.errors import DataError, TokenizerError
from lmforge.tokenizers import KINDS, SPECIAL_TOKENS, Tokenizer

ENGLISH = "The quick brown fox jumps over the lazy dog. It's 42 degrees, isn't it?"
CHINESE = "语言模型从原始文本中学习。你好，世界！"
EMOJI = "Family 👨‍👩‍👧‍👦, rainbow flag 🏳️‍🌈, thumbs 👍🏽 and 🙂 done"
MIXED = "def f(x):\n\treturn x  # tab\n    indented\r\n\n  trailing spaces  \n混合 text 🎉\n"
ROUND_TRIP_TEXTS = [ENGLISH, CHINESE, EMOJI, MIXED, " leading space", "a\u00a0b é e\u0301", ""]

ENGLISH_CORPUS = [
    "hello world, hello there. the world is wide and the sea is deep.",
    "language models learn from text; tokenizers split text into pieces.",
    "a tokenizer maps text to ids and ids back to text.",
] * 30


@pytest.fixture(scope="module")
def bpe() -> Tokenizer:
    # Byte-level: trained on English only, it must still round-trip Chinese and emoji.
    return Tokenizer.train("bpe", ENGLISH_CORPUS, vocab_size=300)


@pytest.fixture(scope="module")
def char() -> Tokenizer:
    return Tokenizer.train("char", ENGLISH_CORPUS + ROUND_TRIP_TEXTS)


@pytest.fixture(scope="module")
def wordpiece() -> Tokenizer:
    return Tokenizer.train("wordpiece", ENGLISH_CORPUS, vocab_size=200, min_frequency=1)


@pytest.fixture(scope="module")
def unigram() -> Tokenizer:
    return Tokenizer.train("unigram", ENGLISH_CORPUS, vocab_size=100)


@pytest.fixture(scope="module")
def word() -> Tokenizer:
    return Tokenizer.train("word", ENGLISH_CORPUS, vocab_size=40)


@pytest.fixture(scope="module")
def all_kinds(bpe, char, wordpiece, unigram, word) -> dict[str, Tokenizer]:
    return {"bpe": bpe, "char": char, "wordpiece": wordpiece, "unigram": unigram, "word": word}


# ---- round trips ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text", ROUND_TRIP_TEXTS, ids=["english", "chinese", "emoji", "mixed", "space", "nbsp", "empty"]
)
@pytest.mark.parametrize("kind", ["bpe", "char"])
def test_lossless_round_trip(all_kinds, kind, text):
    tok = all_kinds[kind]
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.unk_id not in ids
    assert all(0 <= i < tok.vocab_size for i in ids)


def test_bpe_learns_merges_and_batch_matches_single(bpe):
    # Merges were learned: a frequent word takes fewer tokens than bytes.
    assert len(bpe.encode("hello world")) < len("hello world")
    texts = [ENGLISH, CHINESE, EMOJI]
    assert bpe.encode_batch(texts) == [bpe.encode(t) for t in texts]


def test_char_tokenizer_is_one_token_per_code_point(char):
    ids = char.encode(EMOJI)
    assert len(ids) == len(EMOJI)  # ZWJ sequences are several code points, each its own token
    assert [char.id_to_token(i) for i in ids] == list(EMOJI)


def test_char_unknown_character_maps_to_unk(char):
    assert char.encode("Ω") == [char.unk_id]
    assert char.decode(char.encode("hello Ω")) == "hello "


@pytest.mark.parametrize("kind", ["wordpiece", "unigram"])
def test_subword_kinds_encode_and_decode_sensible_text(all_kinds, kind):
    tok = all_kinds[kind]
    for text in ["hello world", "the world is wide", "tokenizers split text into pieces"]:
        ids = tok.encode(text)
        assert ids and tok.unk_id not in ids
        assert tok.decode(ids) == text
    # Pieces longer than one character were learned.
    assert len(tok.encode("hello world")) < len("hello world")


def test_wordpiece_unknown_characters_map_to_unk(wordpiece):
    assert wordpiece.encode("Ω") == [wordpiece.unk_id]
    assert wordpiece.encode("hello Ω")[-1] == wordpiece.unk_id


# ---- special tokens and the saved file -------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_special_tokens_have_the_same_ids_in_every_kind(all_kinds, kind):
    tok = all_kinds[kind]
    assert tok.special_ids == {"pad": 0, "unk": 1, "bos": 2, "eos": 3, "mask": 4}
    assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id, tok.mask_id) == (0, 1, 2, 3, 4)
    for i, token in enumerate(SPECIAL_TOKENS.values()):
        assert tok.id_to_token(i) == token
        assert tok.token_to_id(token) == i
    info = tok.info()
    assert info["kind"] == kind
    assert info["special_tokens"]["eos"] == {"id": 3, "token": "<|eos|>"}
    # Special tokens stay whole and are dropped when decoding unless asked for.
    ids = [tok.bos_id, *tok.encode("hello world"), tok.eos_id]
    assert tok.decode(ids) == tok.decode(ids[1:-1])
    assert tok.decode(ids, skip_special_tokens=False).startswith("<|bos|>")
    assert tok.decode(ids, skip_special_tokens=False).endswith("<|eos|>")


@pytest.mark.parametrize("kind", KINDS)
def test_saved_file_loads_with_plain_hugging_face_tokenizers(all_kinds, kind, tmp_path):
    tok = all_kinds[kind]
    path = tok.save(tmp_path)
    assert path == tmp_path / "tokenizer.json"
    plain = HFTokenizer.from_file(str(path))
    for text in ["hello world", ENGLISH, "the sea is deep\n\tand wide"]:
        assert plain.encode(text, add_special_tokens=False).ids == tok.encode(text)
    for i, token in enumerate(SPECIAL_TOKENS.values()):
        assert plain.token_to_id(token) == i
    assert plain.get_vocab_size(with_added_tokens=True) == tok.vocab_size
    loaded = Tokenizer.load(tmp_path)  # the folder form
    assert loaded.kind == kind and loaded.encode(ENGLISH) == tok.encode(ENGLISH)


def test_save_to_a_json_path_creates_missing_folders(bpe, tmp_path):
    path = bpe.save(tmp_path / "a" / "b" / "tok.json")
    assert path == tmp_path / "a" / "b" / "tok.json" and path.is_file()
    assert not list(path.parent.glob(".*tmp*"))  # the temporary file was renamed
    assert Tokenizer.load(path).sha256() == bpe.sha256()


# ---- vocabulary sizes --------------------------------------------------------------------------


def _varied_corpus() -> list[str]:
    import random

    rng = random.Random(0)
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZéüñ" + "".join(
        chr(0x4E00 + i) for i in range(150)
    )
    words = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 9))) for _ in range(3000)]
    return [" ".join(words[i : i + 12]) for i in range(0, len(words), 12)]


@pytest.mark.parametrize(
    ("kind", "vocab_size"),
    [("bpe", 261), ("bpe", 400), ("wordpiece", 60), ("wordpiece", 400), ("unigram", 400)],
)
def test_vocab_size_is_an_upper_bound(kind, vocab_size):
    # ~200 distinct characters: more than a small vocabulary holds, so the trainers must cap it.
    tok = Tokenizer.train(kind, _varied_corpus(), vocab_size=vocab_size, min_frequency=1)
    assert len(SPECIAL_TOKENS) < tok.vocab_size <= vocab_size
    assert tok.vocab_size >= vocab_size * 0.9  # and the corpus is large enough to nearly fill it
    assert tok.special_ids["mask"] == 4


def test_capped_char_vocabulary_keeps_the_most_frequent_characters():
    tok = Tokenizer.train("char", ["aaaaa bbbb ccc dd e", "aa bb"], vocab_size=len(SPECIAL_TOKENS) + 3)
    assert tok.vocab_size == 8
    kept = {tok.id_to_token(i) for i in range(len(SPECIAL_TOKENS), tok.vocab_size)}
    assert kept == {"a", "b", " "}
    assert tok.encode("e") == [tok.unk_id]


@pytest.mark.parametrize(("kind", "vocab_size"), [("bpe", 100), ("bpe", 5), ("char", 5), ("unigram", 20)])
def test_too_small_vocab_size_is_a_tokenizer_error(kind, vocab_size):
    with pytest.raises(TokenizerError, match="vocab-size"):
        Tokenizer.train(kind, _varied_corpus(), vocab_size=vocab_size)


# ---- fingerprints ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_sha256_is_stable_across_save_and_load(all_kinds, kind, tmp_path):
    tok = all_kinds[kind]
    digest = tok.sha256()
    assert len(digest) == 64 and int(digest, 16) >= 0
    assert Tokenizer.load(tok.save(tmp_path)).sha256() == digest
    assert Tokenizer.from_str(tok.to_str()).sha256() == digest
    assert tok.info()["sha256"] == digest


def test_sha256_differs_between_tokenizers(all_kinds):
    digests = {tok.sha256() for tok in all_kinds.values()}
    assert len(digests) == len(all_kinds)
    other_bpe = Tokenizer.train("bpe", ["completely different words here"] * 20, vocab_size=300)
    assert other_bpe.sha256() != all_kinds["bpe"].sha256()
    # Training is deterministic: the same corpus gives the same fingerprint.
    again = Tokenizer.train("bpe", ["completely different words here"] * 20, vocab_size=300)
    assert again.sha256() == other_bpe.sha256()


# ---- errors -------------------------------------------------------------------------------------


def test_load_missing_path_is_a_tokenizer_error(tmp_path):
    with pytest.raises(TokenizerError, match="no tokenizer at"):
        Tokenizer.load(tmp_path / "nope.json")
    with pytest.raises(TokenizerError, match="no tokenizer at"):
        Tokenizer.load(tmp_path)  # a folder without tokenizer.json


@pytest.mark.parametrize("content", ["", "{not json", "{}", '{"model": {"type": "Nope"}}', "[1, 2, 3]"])
def test_load_corrupted_file_is_a_tokenizer_error(tmp_path, content):
    path = tmp_path / "tokenizer.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(TokenizerError, match="not a valid tokenizer.json") as info:
        Tokenizer.load(path)
    assert "\n" not in str(info.value)


def test_load_truncated_tokenizer_is_a_tokenizer_error(bpe, tmp_path):
    path = tmp_path / "tokenizer.json"
    text = bpe.to_str()
    path.write_text(text[: len(text) // 2], encoding="utf-8")
    with pytest.raises(TokenizerError, match="not a valid tokenizer.json"):
        Tokenizer.load(tmp_path)
    with pytest.raises(TokenizerError, match="not a valid tokenizer.json"):
        Tokenizer.from_str(text[: len(text) // 2])
    assert json.loads(text)  # the full text was valid


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("corpus", [[], [""], ["   ", "\n\t\n"]], ids=["nothing", "empty", "whitespace"])
def test_empty_corpus_is_a_tokenizer_error(kind, corpus):
    with pytest.raises(TokenizerError, match="empty corpus"):
        Tokenizer.train(kind, iter(corpus))


def test_unknown_kind_is_a_tokenizer_error():
    with pytest.raises(TokenizerError, match="unknown tokenizer kind 'sentencepiece'"):
        Tokenizer.train("sentencepiece", ["hello"])


@pytest.mark.parametrize("kind", KINDS)
def test_errors_raised_while_reading_the_corpus_pass_through(kind):
    def texts():
        yield "hello world " * 10
        raise DataError("corpus.txt is not UTF-8")

    with pytest.raises(DataError, match="corpus.txt is not UTF-8"):
        Tokenizer.train(kind, texts())


def test_char_fast_path_gives_the_library_ids():
    corpus = "Hello, world!\n\t你好 🎉👩‍👩‍👧 code()\n"
    tok = Tokenizer.train("char", [corpus])
    samples = [corpus, "unseen ✓ chars ż and ß", "", "text with <|eos|> markup", "\n\n  indented", "🎉" * 5]
    for text in samples:
        assert tok.encode(text) == tok.hf.encode(text, add_special_tokens=False).ids, text
    assert tok.encode_batch(samples) == [
        e.ids for e in tok.hf.encode_batch(samples, add_special_tokens=False)
    ]
    assert tok.unk_id in tok.encode("ż")


def test_word_tokenizer_caps_the_vocabulary_with_unk():
    text = "the cat sat on the mat\nthe dog sat\n"
    tok = Tokenizer.train(
        "word", [text], vocab_size=len(SPECIAL_TOKENS) + 2
    )  # keeps "the" (3x) and "sat" (2x)
    assert tok.kind == "word" and tok.vocab_size == len(SPECIAL_TOKENS) + 2
    ids = tok.encode("the cat sat on a mat")
    assert ids[0] == tok.token_to_id("the") and ids[2] == tok.token_to_id("sat")
    assert ids[1] == tok.unk_id and ids[4] == tok.unk_id  # "cat" fell under the cap, "a" was never seen
    assert tok.decode(tok.encode("the  sat\nthe")) == "the sat the"
    assert Tokenizer.from_str(tok.to_str()).kind == "word"
