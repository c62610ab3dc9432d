"""The core install: the lifecycle works without any extra, and a feature that needs one says which.

The subprocess tests hide every optional package behind an import hook (each finder on sys.meta_path answers
"not found" for them), which is what a `pip install lmforge` without extras looks like to lmforge.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from lmforge.errors import LmforgeError, MissingExtraError
from lmforge.extras import available, require

# Every optional package (and `datasets`, which lmforge no longer uses at all).
OPTIONAL = [
    "transformers",
    "onnx",
    "onnxruntime",
    "onnxscript",
    "fastapi",
    "uvicorn",
    "jieba",
    "matplotlib",
    "sklearn",
    "seqeval",
    "sacrebleu",
    "rouge_score",
    "tensorboard",
    "pyarrow",
    "datasets",
    "datasketch",
    "opacus",
    "optuna",
    "cmaes",
]

BLOCKER = f"""
import sys

BLOCKED = {set(OPTIONAL)!r}


class Hide:
    # Every finder answers "not found" for a hidden package, as when it is not installed: an import raises
    # ModuleNotFoundError, importlib.util.find_spec returns None (torch's own probes of onnx etc. keep working).
    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            return None
        return self.finder.find_spec(name, path, target)

    def __getattr__(self, attr):
        return getattr(self.finder, attr)


assert not BLOCKED & set(sys.modules), BLOCKED & set(sys.modules)
sys.meta_path[:] = [Hide(finder) for finder in sys.meta_path]
"""

LEAKED = """
leaked = sorted(m for m in sys.modules if m.partition(".")[0] in BLOCKED)
assert not leaked, leaked
"""


def run_without_extras(tmp_path, body: str) -> str:
    script = BLOCKER + textwrap.dedent(body) + LEAKED
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_require_names_the_extra():
    with pytest.raises(
        MissingExtraError,
        match=r"a test feature needs the no_such_module_xyz package: "
        r'pip install "lmforge\[x\]"',
    ) as info:
        require("no_such_module_xyz.sub", extra="x", feature="a test feature")
    assert isinstance(info.value, LmforgeError)  # the CLI prints it as one `error:` line
    assert "\n" not in str(info.value)
    assert not available("no_such_module_xyz")
    assert require("json", extra="x", feature="json").dumps([]) == "[]"


def test_the_lifecycle_needs_no_extra(tmp_path):
    out = run_without_extras(
        tmp_path,
        """
        import warnings
        from pathlib import Path

        import lmforge

        lines = [f"{a} sees {b} at {n} o'clock." for a in ("alice", "bob", "carol") for b in ("dave", "erin")
                 for n in range(1, 13)]
        Path("corpus.txt").write_text("\\n".join(lines * 3) + "\\n", encoding="utf-8")
        Path("page.html").write_text("<html><body><p>alice meets bob</p><script>x()</script></body></html>")
        lmforge.prepare(["corpus.txt", "page.html"], "data", tokenizer="char", doc_split="line", progress=False)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = lmforge.pretrain("data", "run", preset="test", max_steps=4,
                                      overrides={"train.eval_every": 4, "train.eval_tokens": 2048}, progress=False)
        assert any("lmforge[tb]" in str(w.message) for w in caught), [str(w.message) for w in caught]
        assert not (Path("run") / "tensorboard").exists()
        lm = lmforge.load("run", device="cpu", compile=False)
        text = lm.generate("alice", max_new_tokens=8, temperature=0)
        scores = lmforge.evaluate("run", "data")
        from lmforge.cli.main import build_parser  # `lmforge --help` imports every verb's module

        build_parser()
        print("OK", result.step, type(text).__name__, round(scores["loss"], 2))
    """,
    )
    assert out.startswith("OK 4 str ")


def test_features_beyond_the_core_name_their_extra(tmp_path):
    out = run_without_extras(
        tmp_path,
        """
        import numpy as np

        from lmforge.errors import MissingExtraError


        def extra_of(fn, *args, **kwargs):
            try:
                fn(*args, **kwargs)
            except MissingExtraError as exc:
                return str(exc).rpartition("lmforge[")[2].rstrip(']"')
            raise AssertionError(f"{fn.__name__} ran without its extra")


        from lmforge.data.clean import segment_words
        from lmforge.data.dedup import NearDuplicateFilter
        from lmforge.data.sources import expand_inputs, iter_records
        from lmforge.eval.classification import _plot_roc, classification_metrics
        from lmforge.eval.ner import entity_metrics
        from lmforge.export.hf import _hf_tokenizer
        from lmforge.export.onnx import export_onnx
        from lmforge.config import RunConfig, TrainConfig
        from lmforge.train.objectives import ShuffledEpochs
        from lmforge.train.privacy import DPSGD, DPOptions

        open("t.parquet", "wb").write(b"PAR1")
        (parquet,) = expand_inputs(["t.parquet"])
        found = [
            extra_of(segment_words, "中文分词"),
            extra_of(NearDuplicateFilter, 0.8),
            extra_of(list, iter_records(parquet)),
            extra_of(classification_metrics, np.array([0, 1]), np.array([[0.9, 0.1], [0.2, 0.8]]), ["a", "b"]),
            extra_of(_plot_roc, {"fpr": [0, 1], "tpr": [0, 1]}, 0.5, "roc.png"),
            extra_of(entity_metrics, [["B-PER"]], [["B-PER"]]),
            extra_of(_hf_tokenizer, __import__("pathlib").Path(".")),
            extra_of(export_onnx, "no-such-run", "onnx-out"),
            extra_of(DPSGD, DPOptions(8.0), 100, RunConfig(train=TrainConfig(batch_size=10)), ShuffledEpochs(100, 10)),
        ]
        print(" ".join(found))
    """,
    )
    assert out.split() == ["zh", "dedup", "parquet", "tasks", "tasks", "tasks", "hf", "onnx", "privacy"]
