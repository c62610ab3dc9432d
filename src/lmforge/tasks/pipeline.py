"""`pipeline(task, model=CKPT)`: a fine-tuned checkpoint as a function from texts to predictions, in the manner of
Hugging Face's `pipeline("sentiment-analysis")`; each task's own pipeline class does the work.

    clf = lmforge.pipeline("sentiment-analysis", model="sst2-run")
    clf(["a gripping film", "a waste of time"])   # [{"label": "1", "score": 0.97}, {"label": "0", "score": 0.91}]
    ner = lmforge.pipeline("ner", model="conll-run")
    qa = lmforge.pipeline("question-answering", model="squad-run")

`lmforge.pipeline` itself is lm.py's factory: it serves the tasks that need an `LM` ("text-generation",
"fill-mask", "feature-extraction", "translation", "summarization"; tasks cannot import lm.py) and hands the others
to this one.
"""

from __future__ import annotations

import os
from pathlib import Path

from lmforge.errors import ConfigError
from lmforge.tasks.classify.pipeline import TextClassificationPipeline
from lmforge.tasks.ner.pipeline import TokenClassificationPipeline
from lmforge.tasks.qa.pipeline import QuestionAnsweringPipeline

TASK_ALIASES = {
    "sentiment-analysis": "classify",
    "text-classification": "classify",
    "classify": "classify",
    "nli": "nli",
    "zero-shot-nli": "nli",
    "ner": "ner",
    "token-classification": "ner",
    "question-answering": "qa",
    "qa": "qa",
}


def pipeline(task: str, model: str | os.PathLike, device: str = "auto", **kw):
    """A prediction function for `task` ("sentiment-analysis", "text-classification", "nli", "ner",
    "question-answering") from a checkpoint."""
    if task not in TASK_ALIASES:
        raise ConfigError(f"unknown pipeline task {task!r}; choose one of {', '.join(TASK_ALIASES)}")
    if not Path(model).exists():
        raise ConfigError(f"{model} does not exist; give a fine-tuned checkpoint folder or run directory")
    if TASK_ALIASES[task] == "qa":
        return QuestionAnsweringPipeline(model, device=device)
    if TASK_ALIASES[task] == "ner":
        return TokenClassificationPipeline(model, device=device, **kw)
    return TextClassificationPipeline(model, device=device, **kw)
