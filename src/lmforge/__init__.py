"""lmforge: take a language model from raw text to a model people use.

The Python API mirrors the command line:

    import lmforge
    lmforge.prepare(["corpus.txt"], out="data", tokenizer="bpe", vocab_size=2048)
    lmforge.pretrain(data="data", out="run", preset="tiny", max_steps=300)
    lm = lmforge.load("run")
    print(lm.generate("Once upon a time", max_new_tokens=40))
"""

from lmforge.errors import LmforgeError
from lmforge.version import __version__


def __getattr__(name):
    # Lazy imports keep `import lmforge` (and `lmforge --help`) fast: torch is only loaded when needed.
    if name == "prepare":
        from lmforge.data.prepare import prepare

        return prepare
    if name == "pretrain":
        from lmforge.tasks.lm.run import pretrain

        return pretrain
    if name in ("load", "LM"):
        from lmforge import lm

        return getattr(lm, name)
    if name == "evaluate":
        from lmforge.eval.perplexity import evaluate

        return evaluate
    if name == "finetune":
        from lmforge.tasks.finetune import finetune

        return finetune
    if (
        name == "pipeline"
    ):  # lm.py's factory: the LM tasks (text-generation, fill-mask, ...) and tasks/pipeline.py's
        from lmforge.lm import pipeline

        return pipeline
    if name == "Tokenizer":
        from lmforge.tokenizers import Tokenizer

        return Tokenizer
    raise AttributeError(f"module 'lmforge' has no attribute {name!r}")


__all__ = [
    "LmforgeError",
    "prepare",
    "pretrain",
    "finetune",
    "pipeline",
    "load",
    "LM",
    "evaluate",
    "Tokenizer",
    "__version__",
]
