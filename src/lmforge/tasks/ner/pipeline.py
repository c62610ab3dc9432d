"""`pipeline("ner", model=RUN)`: a fine-tuned tagger as a function from texts to entities with character offsets.

    ner = lmforge.pipeline("ner", model="conll-run")
    ner("Peter Blackburn flew to Brussels.")
    # [{"type": "PER", "text": "Peter Blackburn", "start": 0, "end": 15, "score": 0.98, ...},
    #  {"type": "LOC", "text": "Brussels", "start": 24, "end": 32, "score": 0.99, ...}]

Each entity also carries transformers' token-classification keys (`entity_group`, `word`, as its pipeline gives
with aggregation_strategy="simple"), so code written for that pipeline reads ours.

The text is split into CoNLL-style words (punctuation apart, as the training files have it) with their spans in
the original string; the model tags each word; B-/I-(/E-/S-) tags are merged into entities whose offsets point into
the original text, whatever its spacing.
"""

from __future__ import annotations

import os
import re

from lmforge.checkpoint import load_for_inference
from lmforge.errors import ConfigError
from lmforge.eval.ner import write_ner_report
from lmforge.outputs import check_output, staged
from lmforge.tasks.ner.conll import check_tags, read_conll, scheme_of
from lmforge.tasks.ner.encoding import WordEncoder
from lmforge.tasks.ner.run import score_sentences, tag_pieces

# A word: letters/digits with inner joiners kept ("U.S", "1,000", "Jean-Pierre", "AT&T"), or one other character.
WORD = re.compile(r"\w+(?:[-'’.,:/&]\w+)*|\S")


def split_words(text: str) -> list[tuple[str, int, int]]:
    """(word, start, end) for each word of `text`, with character offsets into it."""
    return [(m.group(), m.start(), m.end()) for m in WORD.finditer(text)]


def merge_entities(tags: list[str], probs: list[float]) -> list[tuple[str, int, int, float]]:
    """(type, first word, last word + 1, mean tag probability) for each entity of a tag sequence.

    Lenient where the model is inconsistent: an I- (or E-) tag that does not continue an entity of its type starts
    one, rather than losing the words (strict scoring in evaluate judges such sequences as they are)."""
    out = []
    current = None  # [type, start, end]
    for i, tag in enumerate(tags + ["O"]):
        prefix, kind = tag[:1], tag[2:]
        continues = current is not None and prefix in "IE" and kind == current[0]
        if current is not None and not continues:
            out.append(current)
            current = None
        if continues:
            current[2] = i + 1
        elif prefix != "O":
            current = [kind, i, i + 1]
        if current is not None and prefix in "ES":  # BIOES: the entity ends on this word
            out.append(current)
            current = None
    return [(k, a, b, sum(probs[a:b]) / (b - a)) for k, a, b in out]


def entity(kind: str, text: str, start: int, end: int, score: float) -> dict:
    """One found entity: ours (type, text) and transformers' (entity_group, word) names, offsets, score."""
    return {
        "type": kind,
        "text": text,
        "start": start,
        "end": end,
        "score": score,
        "entity_group": kind,
        "word": text,
    }


class TokenClassificationPipeline:
    def __init__(self, model: str | os.PathLike, device: str = "auto", batch_size: int = 64):
        self.lm = load_for_inference(model, device=device)
        if getattr(self.lm.model.config, "objective", None) != "tag":
            raise ConfigError(
                f"{model} is a {self.lm.config.get('arch')} checkpoint, not a fine-tuned tagger; "
                "fine-tune one with `lmforge finetune --task ner`"
            )
        cfg = self.lm.model.config
        self.labels = list(cfg.labels)
        self.encoder = WordEncoder(self.lm.tokenizer, cfg.backbone, cfg.block_size)
        self.batch_size = batch_size

    def tag_words(self, sentences: list[list[str]]) -> tuple[list[list[str]], list[list[float]]]:
        """The tag of every word, and its probability, for sentences given as words."""
        pieces = [self.encoder.pieces(words) for words in sentences]
        tags, probs, _ = tag_pieces(self.lm.model, self.encoder, pieces, self.lm.device, self.batch_size)
        return [[self.labels[i] for i in seq] for seq in tags], probs

    def __call__(self, inputs: str | list[str]) -> list[dict] | list[list[dict]]:
        """Entities {type, text, start, end, score} of a text (or a list of them: one list each); start/end are
        character offsets into the text as given."""
        single = isinstance(inputs, str)
        texts = [inputs] if single else list(inputs)
        if not all(isinstance(t, str) for t in texts):
            raise ConfigError("give a text or a list of texts")
        words = [split_words(t) for t in texts]
        tags, probs = self.tag_words([[w for w, _, _ in ws] for ws in words])
        out = []
        for text, ws, seq, ps in zip(texts, words, tags, probs):
            out.append(
                [
                    entity(kind, text[ws[a][1] : ws[b - 1][2]], ws[a][1], ws[b - 1][2], score)
                    for kind, a, b, score in merge_entities(seq, ps)
                ]
            )
        return out[0] if single else out


def _word_entities(words: list[str], tags: list[str]) -> list[dict]:
    return [
        {"type": k, "text": " ".join(words[a:b])} for k, a, b, _ in merge_entities(tags, [1.0] * len(tags))
    ]


def evaluate_ner(
    model: str | os.PathLike,
    data: str | os.PathLike,
    report: str | os.PathLike | None = None,
    device: str = "auto",
    samples: int = 20,
    overwrite: bool = False,
) -> dict:
    """Entity-level precision/recall/F1 (seqeval, strict; overall and per type) of a fine-tuned tagger on a CoNLL
    file; with `report`, also metrics.json, report.md and a confusion plot in that folder (which appears whole at
    the end, and replaces an existing one only with overwrite=True: lmforge.outputs)."""
    if report is not None:
        check_output(report, overwrite=overwrite, inputs=[model, data], flag="--report")
    ner = TokenClassificationPipeline(model, device=device)
    sentences = read_conll(data)
    check_tags(sentences, ner.labels, data)
    scores = score_sentences(ner.lm.model, ner.encoder, sentences, ner.lm.device)
    scores["scheme"] = scheme_of(ner.labels)
    if report is not None:
        shown = sentences[:samples]
        predicted, _ = ner.tag_words([s.words for s in shown])
        rows = [
            {
                "text": " ".join(s.words),
                "gold": _word_entities(s.words, s.tags),
                "predicted": _word_entities(s.words, p),
            }
            for s, p in zip(shown, predicted)
        ]
        with staged(report) as tmp:
            write_ner_report(scores, tmp, rows)
    return scores
