"""The speed-ups of `prepare` (issue 20 part 5) against their off states: line-by-line cleaning, encoding that
overlaps cleaning, batched numpy MinHash. Same shards and manifest, same near-duplicate verdicts on planted ones."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

import lmforge.data.clean as clean
import lmforge.data.prepare as prep
import lmforge.data.sources as sources
from lmforge.data.dedup import _WORDS, MinHashFilter, lsh_bands, shingles, word_hashes
from lmforge.data.prepare import prepare
from lmforge.tokenizers import Tokenizer

WORDS = [f"w{i}" for i in range(500)]
# Whitespace, control and line-break characters that the cleaner treats differently, and ordinary text.
ALPHABET = ["a", "b", " ", "\t", "\n", "\r", "\x00", "\x0b", "\x0c", "\x1c", "\x7f", "\x85", "\x9f", "\xa0"]
ALPHABET += ["\u2028", "\u3000", "\u200b", "é", "中", "\n\n\n\n", " \n", "\t\n"]


def random_text(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, n)))


def outputs(out: Path) -> tuple[dict, dict]:
    """The manifest without its creation time, and the bytes of every other file."""
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    manifest.pop("created")
    files = {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    files.pop("manifest.json")
    return manifest, files


def corpus_with_everything(folder: Path, seed: int = 0) -> Path:
    """Many small documents (one per paragraph), exact duplicates, messy whitespace, and one long document that
    is written out early and read back (with FLUSH_BYTES and PIECE_CHARS made small by the test)."""
    rng = random.Random(seed)
    folder.mkdir(parents=True)
    paragraphs = []
    for i in range(300):
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 60)))
        paragraphs.append(f"Doc {i} {words} \t\r\nline two\x07 of {i}   ")
    paragraphs += paragraphs[:20]  # exact duplicates
    (folder / "a.txt").write_text("\n\n".join(paragraphs) + "\n", encoding="utf-8")
    long_doc = "\n".join(" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(3000))
    (folder / "b.txt").write_text("intro\n\n" + long_doc + "\n\nouttro\n", encoding="utf-8")
    return folder


@pytest.fixture
def small_buffers(monkeypatch):
    # A 90 KB document then spans many pieces and records, and pass 2 many batches.
    monkeypatch.setattr(sources, "READ_BYTES", 4096)  # read in small chunks, a long paragraph comes in pieces
    monkeypatch.setattr(prep, "FLUSH_BYTES", 4096)
    monkeypatch.setattr(prep, "PIECE_CHARS", 2048)
    monkeypatch.setattr(prep, "ENCODE_CHUNK_BYTES", 1024)
    monkeypatch.setattr(prep, "ENCODE_BATCH_BYTES", 8192)
    monkeypatch.setattr(prep, "NEAR_BATCH_BYTES", 4096)


# ---- cleaning ---------------------------------------------------------------------------------------------
def test_line_by_line_cleaning_equals_the_regex_path(monkeypatch):
    rng = random.Random(0)
    for _ in range(20000):
        text = random_text(rng, 30)
        for last in (True, False):
            monkeypatch.setattr(clean, "FAST_CLEAN", True)
            fast = clean.clean_lines(text, last)
            monkeypatch.setattr(clean, "FAST_CLEAN", False)
            assert fast == clean.clean_lines(text, last), (text, last)


def test_document_cleaner_fed_in_pieces_equals_the_regex_path(monkeypatch):
    rng = random.Random(1)
    cleaner = clean.Cleaner(html="off")
    for _ in range(3000):
        pieces = [random_text(rng, 20) + "\n" for _ in range(rng.randint(1, 4))]
        results = []
        for fast in (True, False):
            monkeypatch.setattr(clean, "FAST_CLEAN", fast)
            doc = cleaner.document()
            results.append([doc.feed(p, i == len(pieces) - 1) for i, p in enumerate(pieces)])
        assert results[0] == results[1], pieces


# ---- the whole run: every speed-up on against every one off ------------------------------------------------
@pytest.mark.parametrize(
    "tokenizer, options",
    [
        ("loaded", {"doc_split": "paragraph"}),  # fused: encoding overlaps pass 1
        ("loaded", {"doc_split": "paragraph", "test_fraction": 0.1, "near_dedup": 0.7}),
        ("loaded", {"split": "tail", "doc_split": "paragraph"}),  # two passes, pass 2 overlapped
        ("bpe", {"doc_split": "paragraph"}),  # a tokenizer trained between the passes
        ("loaded", {"doc_split": "file"}),  # auto: 3 files give no val document, falls back to tail
    ],
)
def test_speedups_give_the_same_shards_and_manifest_as_off(
    tmp_path, monkeypatch, small_buffers, tokenizer, options
):
    corpus = corpus_with_everything(tmp_path / "corpus")
    if tokenizer == "loaded":
        texts = (corpus / "a.txt").read_text(encoding="utf-8").split("\n\n")
        Tokenizer.train("bpe", texts, vocab_size=400).save(tmp_path / "tok")
        tokenizer = str(tmp_path / "tok")
    runs = []
    for on in (True, False):
        monkeypatch.setenv("LMFORGE_PREPARE_OVERLAP", "1" if on else "0")
        monkeypatch.setattr(clean, "FAST_CLEAN", on)
        out = tmp_path / f"out-{on}"
        # near-dedup off state: the same numpy method, one streamed signature per document (no batches)
        monkeypatch.setattr(prep, "NEAR_BATCH_BYTES", 4096 if on else 0)
        prepare([str(corpus)], out, tokenizer=tokenizer, vocab_size=300, progress=False, **options)
        runs.append(outputs(out))
    assert runs[0][0] == runs[1][0]
    assert runs[0][1].keys() == runs[1][1].keys()
    for name in runs[0][1]:
        assert runs[0][1][name] == runs[1][1][name], name
    manifest = runs[0][0]
    if options["doc_split"] == "paragraph":
        assert manifest["removed"]["duplicates"] == 20
        assert sum(s["documents"] for s in manifest["splits"].values()) > 250
    else:
        assert manifest["options"]["split"] == "tail"


def test_a_failing_encoder_thread_fails_the_run_and_leaves_nothing(tmp_path, monkeypatch, small_buffers):
    corpus = corpus_with_everything(tmp_path / "corpus")
    Tokenizer.train("bpe", ["some text to learn from"] * 10, vocab_size=300).save(tmp_path / "tok")

    def broken(self, items, nbytes, docs):
        raise OSError("disk full")

    monkeypatch.setattr(prep._Encoder, "_write_batch", broken)
    with pytest.raises(OSError, match="disk full"):
        prepare(
            [str(corpus)],
            tmp_path / "out",
            tokenizer=str(tmp_path / "tok"),
            doc_split="paragraph",
            progress=False,
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "tok"]


# ---- near duplicates ---------------------------------------------------------------------------------------
def planted_corpus(folder: Path, seed: int = 0) -> tuple[Path, set[int]]:
    """80 random documents of 120 words; 20 copies with 1-2 words changed (Jaccard of 3-grams >= 0.9: near
    duplicates) and 20 that share only their first half with an original (Jaccard ~0.33: kept). Returns the
    numbers of the planted near duplicates."""
    rng = random.Random(seed)
    base = [[rng.choice(WORDS) for _ in range(120)] for _ in range(80)]
    docs = [" ".join(d) for d in base]
    planted = set()
    for i in range(20):
        copy = list(base[i])
        for _ in range(rng.randint(1, 2)):
            copy[rng.randrange(120)] = "changed"
        planted.add(len(docs))
        docs.append(" ".join(copy))
        half = base[20 + i][:60] + [rng.choice(WORDS) for _ in range(60)]
        docs.append(" ".join(half))
    folder.mkdir(parents=True)
    (folder / "docs.txt").write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    return folder, planted


def test_numpy_minhash_removes_the_planted_near_duplicates_as_datasketch_does(tmp_path):
    pytest.importorskip("datasketch")
    corpus, planted = planted_corpus(tmp_path / "c")
    runs = {}
    for method in ("numpy", "datasketch"):
        m = prepare(
            [str(corpus)],
            tmp_path / method,
            tokenizer="char",
            doc_split="paragraph",
            near_dedup=0.8,
            near_dedup_method=method,
            progress=False,
        )
        assert m["removed"] == {"empty": 0, "duplicates": 0, "near_duplicates": len(planted)}
        assert m["options"]["near_dedup_method"] == method
        runs[method] = outputs(tmp_path / method)[1]
    assert runs["numpy"] == runs["datasketch"]  # the same documents kept, in the same splits


def test_near_dedup_method_is_checked_and_only_recorded_when_used(tmp_path):
    from lmforge.errors import ConfigError

    corpus, _ = planted_corpus(tmp_path / "c")
    with pytest.raises(ConfigError, match="near_dedup_method"):
        prepare([str(corpus)], tmp_path / "x", tokenizer="char", near_dedup=0.8, near_dedup_method="fast")
    m = prepare([str(corpus)], tmp_path / "plain", tokenizer="char", doc_split="paragraph", progress=False)
    assert "near_dedup_method" not in m["options"]


def test_word_hashes_follow_the_words_of_shingling():
    rng = random.Random(2)
    alphabet = list("ab_1 .,-\n\t") + ["中", "文", "ー", "・", "é", "İ", "ß", "\u3040", "\u30ff", "٣", "Ⅻ"]
    hash_of: dict[str, int] = {}
    word_of: dict[int, str] = {}
    for _ in range(5000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 25)))
        words = _WORDS.findall(text.lower())
        hashes = word_hashes(text).tolist()
        assert len(hashes) == len(words), text
        for w, h in zip(words, hashes):
            assert hash_of.setdefault(w, h) == h  # a word always has the same hash
            assert word_of.setdefault(h, w) == w  # different words have different hashes
    assert len(hash_of) > 500


def test_batched_signatures_equal_streamed_ones():
    rng = random.Random(3)
    docs = []
    for _ in range(300):
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 200)))
        cuts = sorted(rng.randint(0, len(text)) for _ in range(rng.randint(0, 3)))
        docs.append([text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])])
    docs += [["one"], ["two words"], ["", "a"], ["中文字"], ["x", "y z"], [], ["...", "  "]]
    f = MinHashFilter(0.8)
    batch = f.signatures(docs)
    for texts, row in zip(docs, batch):
        sig = f.new()
        for t in texts:
            f.update(sig, t)
        assert np.array_equal(sig, row), texts


def test_minhash_estimates_jaccard():
    rng = random.Random(4)
    f = MinHashFilter(0.8)
    for shared in (0.3, 0.6, 0.9):
        errors = []
        for _ in range(20):
            a = [rng.choice(WORDS) for _ in range(300)]
            b = a[: int(300 * shared)] + [rng.choice(WORDS) for _ in range(300 - int(300 * shared))]
            sa, sb = set(shingles(" ".join(a))), set(shingles(" ".join(b)))
            true = len(sa & sb) / len(sa | sb)
            sig = f.signatures([[" ".join(a)], [" ".join(b)]]) >> np.uint64(32)
            errors.append(float(np.mean(sig[0] == sig[1])) - true)
        assert abs(np.mean(errors)) < 0.03 and np.std(errors) < 0.08, (shared, errors)


def test_lsh_bands_are_datasketchs():
    datasketch = pytest.importorskip("datasketch")
    for threshold in (0.3, 0.5, 0.7, 0.8, 0.85, 0.9, 0.95):
        lsh = datasketch.MinHashLSH(threshold=threshold, num_perm=128)
        assert lsh_bands(threshold, 128) == (lsh.b, lsh.r)


def test_cli_near_dedup_method_reaches_prepare(tmp_path, monkeypatch, capsys):
    import lmforge.cli.main as cli_main

    monkeypatch.setattr(cli_main, "VERB_MODULES", ["prepare"])
    corpus, planted = planted_corpus(tmp_path / "c")
    argv = [
        "prepare",
        str(corpus),
        "--out",
        str(tmp_path / "d"),
        "--tokenizer",
        "char",
        "--doc-split",
        "paragraph",
    ]
    assert cli_main.main([*argv, "--near-dedup", "0.8", "--near-dedup-method", "numpy", "--json"]) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["removed"]["near_duplicates"] == len(planted)
    assert manifest["options"]["near_dedup_method"] == "numpy"
