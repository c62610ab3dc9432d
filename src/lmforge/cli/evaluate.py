"""`lmforge evaluate`: loss, perplexity and bits per byte of a checkpoint."""

from __future__ import annotations

from lmforge.cli.common import add_dtype_option, add_verb, print_json

EXAMPLES = """\
  lmforge evaluate run --data data                 # the validation split of a prepared data directory
  lmforge evaluate run/best --data notes.txt --json
  lmforge evaluate run --data data --split train --max-tokens 100000
  lmforge evaluate run --data data --split test     # data prepared with --test-fraction
  lmforge evaluate ptb-5gram --data ptb.test.txt    # one sentence per line, as the run's data was prepared
  lmforge evaluate run --data notes.txt --doc-split none   # the file as it is: no cleaning, no inner eos
  lmforge evaluate sst2 --task classify --data sst2/glue_dev.tsv --report sst2-report   # + report.md and plots
  lmforge evaluate conll --task ner --data conll2003/valid.txt --json                   # entity P/R/F1 per type
  lmforge evaluate squad --task qa --data squad-dev.json --json                         # exact match and F1
  lmforge evaluate wmt --task translate --data test.tsv --num-beams 4 --json            # BLEU and chrF
  lmforge evaluate cnn --task summarize --data test.jsonl --report cnn-report           # ROUGE-1/2/L F
"""


def register(subparsers) -> None:
    p = add_verb(
        subparsers,
        "evaluate",
        help="loss, perplexity and bits per byte of a checkpoint",
        description="Evaluate a checkpoint (or a run directory's latest) on a data directory or a UTF-8 text file.\n"
        "Bits per byte divide the information by the text's UTF-8 bytes, so models with different\n"
        "tokenizers compare on equal terms. A text file is read the way the run's training data was\n"
        "prepared (its --doc-split, cleaning and one end-of-sequence token after each document; never\n"
        "deduplicated), so it scores as it would once prepared.",
        examples=EXAMPLES,
        func=run,
    )
    p.add_argument("ckpt", metavar="CKPT", help="checkpoint folder or run directory")
    p.add_argument("--data", required=True, help="data directory (uses --split) or a text file")
    p.add_argument(
        "--split",
        default="val",
        help="split of a data directory: train, val, or test (prepared with --test-fraction)",
    )
    p.add_argument(
        "--doc-split",
        choices=["file", "paragraph", "line", "none"],
        help="lm, text file: what a document is (each is followed by end-of-sequence); default: the run's "
        "training data's, recorded with its checkpoint (none when unknown); none: the text as it is, no "
        "cleaning, no end-of-sequence inside",
    )
    p.add_argument("--max-tokens", type=int, help="score at most this many tokens")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="auto")
    add_dtype_option(
        p,
        " (--task lm; the other tasks evaluate in fp32)",
        auto="fp32 weights and the precision training validates in, so the figures match the run's",
    )
    p.add_argument(
        "--task",
        choices=["lm", "classify", "nli", "ner", "qa", "translate", "summarize"],
        default="lm",
        help="lm: loss/perplexity/bits per byte; classify, nli: accuracy, P/R/F1, confusion matrix, "
        "ROC-AUC of a fine-tuned classifier on a labelled --data file; ner: entity P/R/F1 (seqeval, "
        "strict) of a tagger on a CoNLL --data file; translate: BLEU and chrF, summarize: ROUGE-1/2/L F of "
        "the outputs of a model fine-tuned for that task (encoder-decoder or decoder-only gpt) on a "
        "TSV/JSONL pairs file",
    )
    p.add_argument(
        "--report",
        help="classify/nli/ner/translate/summarize: write metrics.json, report.md and plots to this folder",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --report folder, once the new report is complete",
    )
    from lmforge.cli.finetune import add_field_options

    add_field_options(p)
    from lmforge.cli.seq2seq_tasks import add_beam_option, add_pair_options

    add_pair_options(p)
    add_beam_option(p)
    p.add_argument(
        "--json", action="store_true", help="print JSON (keys: loss, perplexity, bits_per_byte, ...)"
    )


def run(args) -> int:
    from lmforge.errors import ConfigError
    from lmforge.eval.perplexity import describe_scores, evaluate

    if args.batch_size < 1 or (args.max_tokens is not None and args.max_tokens < 1):
        raise ConfigError("--batch-size and --max-tokens must be positive")
    if args.dtype != "auto" and args.task != "lm":
        raise ConfigError(f"--dtype applies to --task lm; --task {args.task} evaluates in fp32")
    if args.doc_split is not None and args.task != "lm":
        raise ConfigError(f"--doc-split reads text files for --task lm, not {args.task}")
    if args.task == "ner":
        from lmforge.cli.ner import run_evaluate_ner

        return run_evaluate_ner(args)
    if args.task == "qa":
        from lmforge.cli.qa import run_evaluate_qa

        return run_evaluate_qa(args)
    if args.task in ("translate", "summarize"):
        from lmforge.cli.seq2seq_tasks import run_evaluate_seq2seq

        return run_evaluate_seq2seq(args)
    if args.task != "lm":
        return run_classifier(args)
    from lmforge.checkpoint import load_for_inference

    result = evaluate(
        # auto: as the run validated (fp32 weights, the device's autocast rule), not decoding's bf16 weights
        load_for_inference(args.ckpt, device=args.device, dtype=None if args.dtype == "auto" else args.dtype),
        args.data,
        split=args.split,
        max_tokens=args.max_tokens,
        batch_size=args.batch_size,
        doc_split=args.doc_split,
    )
    if args.json:
        print_json(result)
    else:
        scored = f"{result['tokens']:,} tokens" + (
            f", {result['bytes']:,} bytes" if "bytes" in result else ""
        )
        print(f"{describe_scores(result)}  ({scored})")
    return 0


def run_classifier(args) -> int:
    from lmforge.eval.classification import format_metrics
    from lmforge.tasks.classify.pipeline import evaluate_classifier

    given = {
        "text": args.text_field,
        "pair": args.text_pair_field,
        "label": args.label_field,
        "label_sep": args.label_sep,
    }
    scores = evaluate_classifier(
        args.ckpt, args.data, given, report=args.report, device=args.device, overwrite=args.overwrite
    )
    if args.json:
        print_json(scores)
    else:
        print(format_metrics(scores, list(scores["per_class"])))
        if args.report:
            print(f"report: {args.report}/report.md")
    return 0
