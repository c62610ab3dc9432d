"""`lmforge distill`: train a smaller model against a teacher checkpoint's soft targets (knowledge distillation):
a GPT from a prepared data directory (--data), or a classifier from a labelled file (--train)."""

from __future__ import annotations

from lmforge.cli.common import add_verb, print_json

EXAMPLES = """\
  lmforge distill --teacher run/best --student-preset test --data data --out student --max-minutes 5
  lmforge distill --teacher run/best --student-preset tiny --data data --out student --max-steps 2000 \\
      --temperature 2 --alpha 0.7 --model.n_layer 2 --json
  lmforge distill --teacher sst2/best --student-preset bert-tiny --train sst2/train.tsv --dev sst2/dev.tsv \\
      --out sst2-small --epochs 3 --optim.lr 1e-3
  lmforge distill --teacher sst2 --student-preset lstm --train sst2/train.tsv --dev sst2/dev.tsv --out sst2-lstm
"""
# The columns of the teacher-vs-student table: (key, header, format).
LM_COLUMNS = (
    ("parameters", "parameters", "{:,}"),
    ("val_perplexity", "val perplexity", "{:.3f}"),
    ("tokens_per_s", "tokens/s", "{:.1f}"),
)
CLASSIFY_COLUMNS = (
    ("parameters", "parameters", "{:,}"),
    ("accuracy", "dev accuracy", "{:.4f}"),
    ("macro_f1", "dev macro-F1", "{:.4f}"),
    ("examples_per_s", "examples/s", "{:.1f}"),
)
CLASSIFY_ONLY = ("dev", "text_field", "text_pair_field", "label_field", "label_sep", "epochs", "max_length")


def register(subparsers) -> None:
    p = add_verb(
        subparsers,
        "distill",
        help="train a smaller GPT or classifier against a teacher's soft targets (knowledge distillation)",
        description="Train a student (a preset, with any --model.* / --optim.* / --train.* override) with\n"
        "loss = alpha * T^2 * KL(teacher || student at temperature T) + (1 - alpha) * hard loss:\n"
        "  language model (--data): a GPT on a prepared data directory that uses the teacher's tokenizer,\n"
        "    hard loss = next-token cross-entropy; report: parameters, validation perplexity, greedy tokens/s.\n"
        "  classifier (--train, a teacher from `lmforge finetune --task classify|nli`): a bert or gpt preset\n"
        "    (the teacher's tokenizer) or lstm/gru (a BiLSTM/BiGRU from scratch) with the teacher's labels,\n"
        "    hard loss = cross-entropy with the gold labels; the best checkpoint by dev macro-F1 is RUN/best;\n"
        "    report: parameters, dev accuracy and macro-F1, examples/s of prediction.\n"
        "Both models are reported side by side.",
        examples=EXAMPLES,
        func=run,
    )
    p.add_argument(
        "--teacher",
        required=True,
        help="teacher checkpoint folder or run directory (a causal LM, or a fine-tuned classifier)",
    )
    p.add_argument(
        "--student-preset",
        required=True,
        help="preset of the student (see `lmforge info --presets`); classifiers also lstm | gru",
    )
    p.add_argument(
        "--data",
        help="language model: data directory written by `lmforge prepare` with the teacher's tokenizer",
    )
    p.add_argument("--train", help="classifier: labelled training file (.csv, .tsv, .jsonl)")
    p.add_argument("--dev", help="classifier: labelled dev file, evaluated every epoch and in the report")
    from lmforge.cli.finetune import add_field_options

    add_field_options(p)
    p.add_argument(
        "--epochs", type=float, help="classifier: passes over --train (default 3; --max-steps wins)"
    )
    p.add_argument(
        "--max-length",
        type=int,
        help="classifier: longest input in tokens (default 128, at most the student's context)",
    )
    p.add_argument("--out", required=True, help="run directory for the student")
    p.add_argument("--max-steps", type=int, help="optimizer steps (train.max_steps)")
    p.add_argument(
        "--max-minutes",
        type=float,
        help="stop after this much training time (train.max_minutes); the "
        "learning rate then decays to the end of the time when that comes before --max-steps",
    )
    p.add_argument(
        "--seed",
        type=int,
        help="seed of the student's initial weights and its batches (train.seed; default: the run's, 1337 for a "
        "language model, 0 for a classifier)",
    )
    p.add_argument(
        "--temperature", type=float, default=2.0, help="softmax temperature T of both models (default 2)"
    )
    p.add_argument(
        "--alpha", type=float, default=0.5, help="weight of the soft (teacher) term, in [0, 1] (default 0.5)"
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(accepts_overrides=True)


def run(args) -> int:
    from lmforge.errors import ConfigError

    if (args.data is None) == (args.train is None):
        raise ConfigError(
            "give --data (distill a language model) or --train (distill a classifier), one of them"
        )
    if args.data is not None:
        given = [f"--{k.replace('_', '-')}" for k in CLASSIFY_ONLY if getattr(args, k) is not None]
        if given:
            raise ConfigError(f"{', '.join(given)} go(es) with --train (classifiers), not with --data")
    if args.train is not None:
        return run_classifier(args)
    from lmforge.compress.distill import distill, side_by_side

    result = distill(
        args.teacher,
        args.data,
        args.out,
        args.student_preset,
        overrides=seeded(args),
        max_steps=args.max_steps,
        max_minutes=args.max_minutes,
        temperature=args.temperature,
        alpha=args.alpha,
        progress=not args.quiet,
    )
    return report(
        args, result, side_by_side(args.teacher, result.best or result.latest, args.data), LM_COLUMNS
    )


def run_classifier(args) -> int:
    from lmforge.compress.distill_classify import distill_classifier, side_by_side

    given = {
        "text": args.text_field,
        "pair": args.text_pair_field,
        "label": args.label_field,
        "label_sep": args.label_sep,
    }
    result = distill_classifier(
        args.teacher,
        args.train,
        args.out,
        args.student_preset,
        dev=args.dev,
        fields=given,
        epochs=3 if args.epochs is None else args.epochs,
        max_length=args.max_length,
        overrides=seeded(args),
        max_steps=args.max_steps,
        max_minutes=args.max_minutes,
        temperature=args.temperature,
        alpha=args.alpha,
        progress=not args.quiet,
    )
    rows = side_by_side(args.teacher, result.best or result.latest, args.train, args.dev)
    return report(args, result, rows, CLASSIFY_COLUMNS)


def seeded(args) -> dict:
    """The command's dotted overrides, with --seed as train.seed (an explicit --train.seed wins)."""
    from lmforge.config import parse_overrides

    return {**({} if args.seed is None else {"train.seed": args.seed}), **parse_overrides(args.overrides)}


def report(args, result, rows: dict, columns) -> int:
    """The run and the teacher-vs-student table (`rows`: {"teacher": {...}, "student": {...}}), or their JSON."""
    student = result.best or result.latest
    summary = {
        "run_dir": str(result.run_dir),
        "step": result.step,
        "stop_reason": result.stop_reason,
        "temperature": args.temperature,
        "alpha": args.alpha,
        **rows,
    }
    if args.json:
        print_json(summary)
        return 0
    print(f"distilled {result.step} steps into {student} (stopped by {result.stop_reason})")
    widths = [max(11, len(header)) for _, header, _ in columns]
    print(f"  {'':8} " + " ".join(f"{header:>{w}}" for (_, header, _), w in zip(columns, widths)))
    for name in ("teacher", "student"):
        cells = [("-" if rows[name][key] is None else fmt.format(rows[name][key])) for key, _, fmt in columns]
        print(f"  {name:8} " + " ".join(f"{c:>{w}}" for c, w in zip(cells, widths)))
    return 0
