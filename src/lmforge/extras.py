"""Optional dependencies: import one, or say in one line which `pip install "lmforge[EXTRA]"` brings it.

`pip install lmforge` is the core lifecycle (prepare, tokenizer, pretrain, evaluate, generate); each feature beyond
it names its extra here, so that a missing package is a one-line error and not a traceback:

    sacrebleu = require("sacrebleu", extra="tasks", feature="BLEU scores")
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from lmforge.errors import MissingExtraError


def require(module: str, extra: str, feature: str) -> ModuleType:
    """The imported module, or a MissingExtraError naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if exc.name is not None and module.split(".")[0] != exc.name.split(".")[0]:
            raise  # the package is there but one of its own dependencies is broken: show the real error
        raise MissingExtraError(
            f'{feature} needs the {module.split(".")[0]} package: pip install "lmforge[{extra}]"'
        ) from None


def available(module: str) -> bool:
    """Whether an optional module can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(module.split(".")[0]) is not None
    except (ImportError, ValueError):  # an import hook refused it, or a half-imported module without a spec
        return False
