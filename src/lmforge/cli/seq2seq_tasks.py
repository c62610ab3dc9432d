"""The translate and summarize tasks of `lmforge finetune` and `lmforge evaluate` (those verbs dispatch here)."""

from __future__ import annotations

from lmforge.cli.common import print_json

SEQ2SEQ_TASKS = ("translate", "summarize")


def add_pair_options(p) -> None:
    p.add_argument("--source-field", default="src",
                   help="translate/summarize: JSONL field (or TSV column number) of the source text")
    p.add_argument("--target-field", default="tgt",
                   help="translate/summarize: JSONL field (or TSV column number) of the target text")


def add_beam_option(p) -> None:
    p.add_argument("--num-beams", type=int, default=1,
                   help="translate/summarize: beam size (1: greedy decoding)")


def run_evaluate_seq2seq(args) -> int:
    from lmforge.eval.seq2seq_metrics import evaluate_seq2seq

    scores = evaluate_seq2seq(args.ckpt, args.data, args.task, num_beams=args.num_beams,
                              source_field=args.source_field, target_field=args.target_field, report=args.report,
                              batch_size=args.batch_size, device=args.device)
    if args.json:
        print_json(scores)
    elif args.task == "translate":
        print(f"BLEU {scores['bleu']:.2f}  chrF {scores['chrf']:.2f}  ({scores['pairs']:,} pairs)")
    else:
        print(f"ROUGE-1 {scores['rouge1']:.2f}  ROUGE-2 {scores['rouge2']:.2f}  ROUGE-L {scores['rougeL']:.2f}  "
              f"({scores['pairs']:,} pairs)")
    if args.report and not args.json:
        print(f"report: {args.report}/report.md")
    return 0
