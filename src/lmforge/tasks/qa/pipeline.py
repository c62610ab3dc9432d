"""A fine-tuned extractive QA checkpoint as a function: question + context → the answer span, its score and its
character offsets into the context; and its exact match / F1 on a SQuAD-format file.

    qa = QuestionAnsweringPipeline("run")
    qa(question="Who won?", context="The Broncos won the game.")   # {"answer": "The Broncos", "score", "start", "end"}
"""

from __future__ import annotations

import os

from lmforge.checkpoint import load_for_inference
from lmforge.errors import ConfigError
from lmforge.tasks.qa.run import predict
from lmforge.tasks.qa.squad import QAExample, read_squad, squad_scores


class QuestionAnsweringPipeline:
    """question + context → {"answer", "score", "start", "end"} (character offsets into the context)."""

    def __init__(self, model: str | os.PathLike, device: str = "auto"):
        self.lm = load_for_inference(model, device=device)
        if getattr(self.lm.model.config, "objective", None) != "span":
            raise ConfigError(f"{model} is not an extractive QA checkpoint; fine-tune one with --task qa")

    def __call__(self, question: str | list[dict] | None = None, context: str | None = None):
        single = not isinstance(question, list)
        items = [{"question": question, "context": context}] if single else question
        examples = []
        for i, item in enumerate(items):
            q, c = item.get("question"), item.get("context")
            if not isinstance(q, str) or not q.strip() or not isinstance(c, str) or not c.strip():
                raise ConfigError("each input needs a non-empty 'question' and 'context'")
            examples.append(QAExample(str(i), q.strip(), c))
        answers = [
            {k: a[k] for k in ("answer", "score", "start", "end")}
            for a in predict(self.lm.model, self.lm.tokenizer, examples, self.lm.device)
        ]
        return answers[0] if single else answers


def evaluate_qa(model: str | os.PathLike, data: str | os.PathLike, device: str = "auto") -> dict:
    """Exact match and F1 (official SQuAD v1.1 normalisation) of a QA checkpoint on a SQuAD-format file."""
    qa = QuestionAnsweringPipeline(model, device=device)
    examples = read_squad(data)
    return squad_scores(
        {a["id"]: a["answer"] for a in predict(qa.lm.model, qa.lm.tokenizer, examples, qa.lm.device)},
        examples,
    )
