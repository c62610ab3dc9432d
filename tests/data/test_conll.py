"""data/conll.py: the one CoNLL line reader behind the tagger's data (tasks/ner/conll.py) and the task-agnostic
labelled files of `lmforge split` / `augment` (data/labelled.py), with the same checks and messages."""

import pytest

from lmforge.data.conll import ConllReader
from lmforge.data.labelled import read_labelled
from lmforge.errors import DataError
from lmforge.tasks.ner.conll import read_conll

TEXT = "-DOCSTART- -X- O\n\nEU NNP B-ORG\nrejects VBZ O\n\nPeter NNP I-PER\n\n-DOCSTART- -X- O\n\nBonn NNP S-LOC\n"


def test_both_readers_see_the_same_sentences(tmp_path):
    path = tmp_path / "a.conll"
    path.write_text(TEXT)
    reader = ConllReader(path)
    sentences = list(reader)
    assert [(s.line, s.document) for s in sentences] == [(3, 0), (6, 0), (10, 1)]
    assert reader.docstart == "-DOCSTART- -X- O"
    ner = read_conll(path)
    assert [s.words for s in ner] == [["EU", "rejects"], ["Peter"], ["Bonn"]]
    assert ner[1].tags == ["B-PER"]  # IOB1 read as IOB2
    assert [s.tags for s in read_conll(path, max_sentences=2)] == [["B-ORG", "O"], ["B-PER"]]
    lf = read_labelled(path)
    assert [[t.columns for t in r.tokens] for r in lf.records] == [s.rows for s in sentences]
    assert [r.document for r in lf.records] == [0, 0, 1] and lf.docstart == "-DOCSTART- -X- O"


@pytest.mark.parametrize(
    "bad, message",
    [
        ("EU NNP B-ORG\nrejects\n", "a.conll:2 has no tag"),
        ("EU NNP B-ORG\nrejects O\n", "a.conll:2 has 2 columns where the file's first line has 3"),
    ],
)
def test_a_malformed_line_is_the_same_error_for_both(tmp_path, bad, message):
    path = tmp_path / "a.conll"
    path.write_text(bad)
    for read in (read_conll, read_labelled):
        with pytest.raises(DataError, match=message):
            read(path)


def test_only_the_tagger_checks_the_tags(tmp_path):
    path = tmp_path / "a.conll"
    path.write_text("EU NNP\nrejects VBZ\n")  # a part-of-speech file: split and augment move it as it is
    assert len(read_labelled(path).records) == 1
    with pytest.raises(DataError, match="a.conll:1 has tag 'NNP'; tags are O, B-TYPE"):
        read_conll(path)
    path.write_bytes(b"EU \xff O\n")
    with pytest.raises(DataError, match="is not UTF-8 text"):
        read_conll(path)
