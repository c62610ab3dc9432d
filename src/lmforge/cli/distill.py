"""`lmforge distill`: train a small GPT from a preset against a teacher checkpoint (knowledge distillation)."""

from __future__ import annotations

from lmforge.cli.common import add_verb, print_json

EXAMPLES = """\
  lmforge distill --teacher run/best --student-preset test --data data --out student --max-minutes 5
  lmforge distill --teacher run/best --student-preset tiny --data data --out student --max-steps 2000 \\
      --temperature 2 --alpha 0.7 --model.n_layer 2 --json
"""


def register(subparsers) -> None:
    p = add_verb(
        subparsers,
        "distill",
        help="train a smaller GPT against a teacher's soft targets (knowledge distillation)",
        description="Train a student GPT (a preset, with any --model.* / --optim.* / --train.* override) on a\n"
        "prepared data directory with loss = alpha * T^2 * KL(teacher || student at temperature T)\n"
        "+ (1 - alpha) * next-token cross-entropy. The data must use the teacher's tokenizer. Prints the\n"
        "teacher and the student side by side: parameters, validation perplexity, greedy tokens/s.",
        examples=EXAMPLES,
        func=run,
    )
    p.add_argument("--teacher", required=True, help="teacher checkpoint folder or run directory (a causal LM)")
    p.add_argument("--student-preset", required=True, help="preset of the student (see `lmforge info --presets`)")
    p.add_argument("--data", required=True, help="data directory written by `lmforge prepare` with the teacher's tokenizer")
    p.add_argument("--out", required=True, help="run directory for the student")
    p.add_argument("--max-steps", type=int, help="optimizer steps (train.max_steps)")
    p.add_argument("--max-minutes", type=float, help="stop after this much training time (train.max_minutes)")
    p.add_argument("--temperature", type=float, default=2.0, help="softmax temperature T of both models (default 2)")
    p.add_argument("--alpha", type=float, default=0.5, help="weight of the soft (teacher) term, in [0, 1] (default 0.5)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(accepts_overrides=True)


def run(args) -> int:
    from lmforge.compress.distill import distill, side_by_side

    result = distill(args.teacher, args.data, args.out, args.student_preset, overrides=args.overrides,
                     max_steps=args.max_steps, max_minutes=args.max_minutes, temperature=args.temperature,
                     alpha=args.alpha, progress=not args.quiet)
    student = result.best or result.latest
    summary = {"run_dir": str(result.run_dir), "step": result.step, "stop_reason": result.stop_reason,
               "temperature": args.temperature, "alpha": args.alpha, **side_by_side(args.teacher, student, args.data)}
    if args.json:
        print_json(summary)
        return 0
    print(f"distilled {result.step} steps into {student} (stopped by {result.stop_reason})")
    print(f"  {'':8} {'parameters':>11} {'val perplexity':>15} {'tokens/s':>10}")
    for name in ("teacher", "student"):
        r = summary[name]
        print(f"  {name:8} {r['parameters']:>11,} {r['val_perplexity']:>15.3f} {r['tokens_per_s']:>10.1f}")
    return 0
