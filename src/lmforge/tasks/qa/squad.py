"""SQuAD-format question answering data and the official SQuAD v1.1 scores (exact match and token F1).

The answer normalisation follows the official evaluation script: lower case, drop punctuation and the articles
a/an/the, collapse whitespace. For text without spaces between words (Chinese, as in CMRC 2018) F1 is computed over
characters, as CMRC's own script does.
"""

from __future__ import annotations

import collections
import json
import os
import re
import string
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from lmforge.errors import DataError


@dataclass
class QAExample:
    id: str
    question: str
    context: str
    answers: list[dict] = field(
        default_factory=list
    )  # {"text", "answer_start"} (several references in dev sets)


def read_squad(path: str | os.PathLike, articles: slice | None = None) -> list[QAExample]:
    """Questions of a SQuAD v1.1-style JSON file (optionally only some of its articles, e.g. slice(0, 18)).

    Answers whose `answer_start` does not point at their text are re-located when the text occurs once in the
    context, else dropped; questions with no text (CMRC 2018's trial set has one) are skipped; one warning counts
    them all.
    """
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))["data"]
    except FileNotFoundError:
        raise DataError(f"{path} does not exist") from None
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
        raise DataError(
            f"{path} is not a SQuAD-format JSON file (a top-level 'data' list of articles)"
        ) from None
    out, fixed, dropped, empty = [], 0, 0, []
    for article in data[articles] if articles else data:
        for para in article.get("paragraphs", []):
            context = para.get("context", "")
            for qa in para.get("qas", []):
                if not str(qa.get("question", "")).strip():
                    empty.append(str(qa.get("id")))
                    continue
                answers = []
                for a in qa.get("answers", []):
                    text, start = a.get("text", ""), a.get("answer_start", -1)
                    if context[start : start + len(text)] != text:
                        if text and context.count(text) == 1:
                            start, fixed = context.index(text), fixed + 1
                        else:
                            dropped += 1
                            continue
                    answers.append({"text": text, "answer_start": start})
                out.append(QAExample(str(qa.get("id", len(out))), qa["question"].strip(), context, answers))
    if fixed or dropped or empty:
        skipped = (
            f"; {len(empty)} question(s) with no text were skipped ({', '.join(empty[:3])})" if empty else ""
        )
        warnings.warn(
            f"{path}: {fixed} answer(s) had a wrong answer_start and were found in their context; "
            f"{dropped} answer(s) do not occur in their context and were dropped{skipped}",
            stacklevel=2,
        )
    if not out:
        raise DataError(f"{path} has no questions")
    return out


def normalize_answer(s: str) -> str:
    s = s.lower()
    s = "".join(
        ch for ch in s if ch not in set(string.punctuation) | set("，。、；：？！“”‘’（）《》【】…—·")
    )
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def _tokens(s: str) -> list[str]:
    norm = normalize_answer(s)
    # No spaces between words (Chinese): characters are the units, as in CMRC 2018's scorer.
    return list(norm.replace(" ", "")) if re.search(r"[\u4e00-\u9fff]", norm) else norm.split()


def exact_match(prediction: str, truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(truth))


def f1_score(prediction: str, truth: str) -> float:
    pred, gold = _tokens(prediction), _tokens(truth)
    common = collections.Counter(pred) & collections.Counter(gold)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: dict[str, str], examples: list[QAExample]) -> dict:
    """Exact match and F1 in percent, each the best over an example's reference answers, averaged."""
    em = f1 = 0.0
    scored = [ex for ex in examples if ex.answers]
    for ex in scored:
        pred = predictions.get(ex.id, "")
        em += max(exact_match(pred, a["text"]) for a in ex.answers)
        f1 += max(f1_score(pred, a["text"]) for a in ex.answers)
    n = max(len(scored), 1)
    return {"exact_match": 100 * em / n, "f1": 100 * f1 / n, "examples": len(scored)}
