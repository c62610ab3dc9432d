"""`lmforge finetune` and `lmforge predict`: task models (classification, NLI, NER, QA, translation, summarization,
chat) trained on labelled files, and their predictions."""

from __future__ import annotations

from lmforge.cli.common import add_verb, print_json

FINETUNE_EXAMPLES = """\
  lmforge import-hf path/to/minilm --out minilm
  lmforge finetune --task classify --model minilm --train sst2/train.tsv --dev sst2/glue_dev.tsv --out sst2 \\
      --text-field sentence --label-field label --epochs 2 --max-length 64
  lmforge finetune --task classify --model minilm --train sst2/train.tsv --out sst2-lora --text-field sentence --lora
  lmforge finetune --task classify --model lstm --train ag_news.tsv --out agnews --text-field 0 --label-field 1 --folds 5
  lmforge finetune --task nli --model minilm --train SICK_train.txt --dev SICK_trial.txt --out sick \\
      --text-field sentence_A --text-pair-field sentence_B --label-field entailment_judgment
  lmforge finetune --task ner --model minilm --train conll2003/train.txt --dev conll2003/valid.txt --out conll
  lmforge finetune --task qa --model minilm --train squad-train.json --dev squad-dev.json --out squad --max-length 256
  lmforge finetune --task translate --model seq2seq-small --train de-en.tsv --dev dev.tsv --out de-en --epochs 20
  lmforge finetune --task translate --model seq2seq-small --train multi30k/train --dev multi30k/val \
      --source-lang de --target-lang en --out de-en --max-minutes 60
  lmforge finetune --task translate --model gpt-ckpt --train de-en.tsv --dev dev.tsv --out de-en-gpt   # decoder-only
  lmforge finetune --task chat --model gpt-ckpt --train chats.jsonl --dev dev.jsonl --out chat --epochs 3
  lmforge finetune --task summarize --model t5ish --train news.jsonl --out sum --source-field article --target-field summary
  lmforge finetune --task chat --model gpt-ckpt --train chats.jsonl --dev dev.jsonl --out chat --epochs 3 --resume  # after Ctrl-C
  lmforge finetune --task lm --model gpt2-ckpt --train book1.txt book2.txt --dev notes.txt --out gpt2-books --epochs 1
  lmforge finetune --task classify --model tfidf --train sst2/train.tsv --dev sst2/glue_dev.tsv --out sst2-tfidf --text-field sentence
  lmforge finetune --task classify --model cnn --vectors wt2.vec --freeze-vectors --train sst2/train.tsv --out sst2-cnn --text-field sentence
--model is a checkpoint (bert or gpt, ours or imported), `lstm`/`gru` for a BiLSTM/BiGRU or `cnn` for Kim's CNN
trained from scratch, or `tfidf` (TF-IDF n-grams + logistic regression / linear SVM, fitted by scikit-learn).
Files: .csv, .tsv (read without quoting) or .jsonl; fields by name, or by 0-based column number for files
without a header. Other training settings: --optim.weight_decay 0.1 --train.grad_accum 2 ...
"""
PREDICT_EXAMPLES = """\
  lmforge predict sst2 --input reviews.txt            # one text per line
  echo "a gripping, funny film" | lmforge predict sst2 --input - --json
  lmforge predict sick --input pairs.jsonl            # a labelled-file format, with the run's field names
  lmforge predict conll --task ner --input news.txt --json   # entities with character offsets, per line
  lmforge predict squad --task qa --input questions.jsonl    # {"question": ..., "context": ...} per line
  lmforge predict de-en --task translate --input sentences.txt --num-beams 4   # one translation per line
"""


def add_field_options(p) -> None:
    p.add_argument(
        "--text-field", help="field (or column number) of the text (default: the run's, or 'text')"
    )
    p.add_argument("--text-pair-field", help="field of the second text of a pair (NLI: the hypothesis)")
    p.add_argument("--label-field", help="field of the label (default: the run's, or 'label')")
    p.add_argument("--label-sep", help="multi-label: separator of several labels in one cell")


def fields_from(args, default=None):
    from lmforge.tasks.classify.examples import Fields

    base = default or Fields()
    return Fields(
        text=args.text_field or base.text,
        pair=args.text_pair_field or base.pair,
        label=args.label_field or base.label,
        label_sep=args.label_sep or base.label_sep,
    )


def register(subparsers) -> None:
    p = add_verb(
        subparsers,
        "finetune",
        help="fine-tune for a task (classify, NLI, NER, QA, translate, summarize, chat, lm)",
        description="Fine-tune a pretrained encoder or decoder (or a from-scratch BiLSTM) with a label head on\n"
        "a labelled file (classify, nli, ner, qa), a seq2seq or gpt model on text pairs (translate,\n"
        "summarize), a gpt on conversations (chat), or any language model on raw text (lm: continued\n"
        "pretraining); the best checkpoint by the task's dev score is RUN/best.",
        examples=FINETUNE_EXAMPLES,
        func=run_finetune,
    )
    p.add_argument(
        "--task",
        required=True,
        choices=["classify", "nli", "ner", "qa", "translate", "summarize", "chat", "lm"],
        help='chat: a gpt checkpoint on JSONL conversations ({"messages": [{"role", "content"}]}),'
        " loss on assistant turns only, scored by dev loss; ner: a tagger on CoNLL files (word ... TAG "
        "per line), scored by entity F1; qa: extractive "
        "question answering on SQuAD-format JSON, scored by exact match and F1; translate/summarize: an "
        "encoder-decoder (seq2seq checkpoint or preset) or a decoder-only gpt checkpoint (source "
        "and target as one sequence, loss on the target only) on TSV/JSONL pairs, scored by BLEU/ROUGE-L; "
        "lm: continued pretraining of a gpt, bert or seq2seq checkpoint (its own objective) on raw text files, "
        "prepared with its tokenizer into RUN/data, scored by dev loss (lr 5e-5 by default)",
    )
    p.add_argument(
        "--doc-stride",
        type=int,
        default=128,
        help="qa: tokens between the starts of consecutive windows over a long context",
    )
    p.add_argument(
        "--model",
        required=True,
        help="checkpoint folder / run directory, or lstm | gru | cnn (from scratch), or tfidf (scikit-learn); "
        "translate/summarize: a seq2seq checkpoint or preset (seq2seq-test, seq2seq-small), or a gpt "
        "checkpoint (decoder-only, prompted with the source)",
    )
    p.add_argument(
        "--train",
        required=True,
        nargs="+",
        metavar="FILE",
        help="labelled training file (.csv, .tsv, .jsonl); lm: one or more raw text files",
    )
    p.add_argument(
        "--dev",
        help="labelled dev file: evaluated every epoch, picks the best checkpoint (lm: a text file; default: "
        "a tenth of --train held out)",
    )
    p.add_argument("--out", required=True, help="run directory")
    add_field_options(p)
    from lmforge.cli.seq2seq_tasks import add_pair_options

    add_pair_options(p)
    p.add_argument(
        "--multi-label", action="store_true", help="several labels per example (sigmoid per label)"
    )
    p.add_argument("--epochs", type=float, default=3)
    p.add_argument("--max-examples", type=int, help="use only the first N training examples")
    p.add_argument(
        "--max-length",
        type=int,
        help="longest input in tokens, longer ones are cut (default 128; qa 384; translate, summarize "
        "and chat use the model's context; lm: the training window, default the model's context)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        help="examples per optimizer step (default: 16 for ner, where 32 halves the updates of a small "
        "training set and scores lower; 32 for the other tasks)",
    )
    p.add_argument("--lr", type=float, help="peak learning rate (default 5e-5 pretrained, 1e-3 from scratch)")
    p.add_argument("--class-weights", action="store_true", help="weigh classes by inverse frequency")
    from lmforge.cli.vectors import add_classic_options

    add_classic_options(p)
    p.add_argument(
        "--lora",
        action="store_true",
        help="train low-rank adapters of the attention projections and the head only (merged when saved)",
    )
    p.add_argument("--lora-r", type=int, default=8, help="LoRA rank")
    p.add_argument(
        "--lora-alpha", type=float, default=16.0, help="LoRA scale numerator (updates scale by alpha/r)"
    )
    p.add_argument(
        "--patience", type=int, help="stop after this many evaluations without a better dev macro-F1"
    )
    p.add_argument("--folds", type=int, help="k-fold cross-validation on --train instead of one run")
    p.add_argument(
        "--max-minutes",
        type=float,
        help="stop after this much training time; the learning rate then "
        "decays to the end of the time when that comes before the planned epochs end",
    )
    p.add_argument(
        "--max-steps",
        type=int,
        metavar="N",
        help="train N optimizer steps instead of --epochs passes over the data (the schedule spans them)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--augment",
        metavar="METHOD",
        help="classify, nli, ner: add new training examples made from the training split only (dev untouched): "
        "eda | contextual | backtranslate | noise (ner: eda, noise), seeded by --seed (see `lmforge augment -h`)",
    )
    p.add_argument(
        "--augment-n", type=int, default=4, help="--augment: new examples per training example (at most)"
    )
    p.add_argument("--augment-alpha", type=float, default=0.1, help="--augment: share of the words changed")
    p.add_argument(
        "--augment-model",
        metavar="PATH",
        help="--augment's resource: eda's word-vectors file (else WordNet), contextual's masked-LM checkpoint, "
        "backtranslate's two translation checkpoints SRC2PIVOT,PIVOT2SRC",
    )
    p.add_argument(
        "--dp-epsilon",
        type=float,
        metavar="EPS",
        help="train with DP-SGD (Opacus; classify, nli, chat, and lm with a gpt: one example is a labelled row, a "
        "conversation, or lm's fixed window of block_size tokens) to (EPS, --dp-delta)-differential privacy: noise "
        "calibrated to EPS for the planned steps, Poisson-sampled batches, per-example clipping; the spent epsilon "
        'is logged and written to the results and the model card (pip install "lmforge[privacy]")',
    )
    p.add_argument(
        "--dp-delta",
        type=float,
        default=1e-5,
        help="DP-SGD's delta, below 1 / training examples (default 1e-5)",
    )
    p.add_argument(
        "--dp-max-grad-norm",
        type=float,
        default=1.0,
        help="DP-SGD: clip each example's gradient to this norm",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its latest checkpoint, exactly (Ctrl-C saves one first); "
        "repeat the command the run started with",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(accepts_overrides=True)

    p = add_verb(
        subparsers,
        "predict",
        help="labels for texts from a fine-tuned classifier",
        description="Predict labels with scores for each line of a text file (or stdin), or for each example\n"
        "of a .csv/.tsv/.jsonl file.",
        examples=PREDICT_EXAMPLES,
        func=run_predict,
    )
    p.add_argument("ckpt", metavar="RUN_OR_CKPT")
    p.add_argument(
        "--task",
        choices=["classify", "ner", "qa", "translate", "summarize"],
        default="classify",
        help="ner: the entities {type, text, start, end, score} of each line; qa: the answer to each "
        '{"question", "context"} line of a JSON Lines file (or every question of a SQuAD file); '
        "translate/summarize: the output of a model fine-tuned for that task (encoder-decoder or gpt) "
        "for each line (or --source-field of a .jsonl)",
    )
    p.add_argument("--input", required=True, help="text file (one text per line), labelled-file format, or -")
    add_field_options(p)
    p.add_argument("--top-k", type=int, default=1, help="labels per text (single-label models)")
    from lmforge.cli.seq2seq_tasks import add_beam_option, add_pair_options

    add_pair_options(p)
    add_beam_option(p)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="print JSON lines")


def run_finetune(args) -> int:
    from lmforge.cli.vectors import classic_from
    from lmforge.tasks.finetune import finetune

    if args.task != "lm" and len(args.train) > 1:
        from lmforge.errors import ConfigError

        raise ConfigError(f"--task {args.task} trains on one --train file; several are for --task lm")
    result = finetune(
        args.task,
        args.model,
        args.train if args.task == "lm" else args.train[0],
        args.out,
        dev=args.dev,
        fields=fields_from(args),
        epochs=args.epochs,
        max_examples=args.max_examples,
        max_length=args.max_length,
        batch_size=args.batch_size,
        lr=args.lr,
        multi_label=args.multi_label,
        class_weights=args.class_weights,
        lora=args.lora,
        lora_r=args.lora_r,
        lora_alpha=args.lora_alpha,
        patience=args.patience,
        folds=args.folds,
        max_minutes=args.max_minutes,
        max_steps=args.max_steps,
        seed=args.seed,
        overrides=args.overrides,
        doc_stride=args.doc_stride,
        progress=not args.quiet,
        source_field=args.source_field,
        target_field=args.target_field,
        source_lang=args.source_lang,
        target_lang=args.target_lang,
        resume=args.resume,
        dp_epsilon=args.dp_epsilon,
        dp_delta=args.dp_delta,
        dp_max_grad_norm=args.dp_max_grad_norm,
        augment=args.augment,
        augment_n=args.augment_n,
        augment_alpha=args.augment_alpha,
        augment_model=args.augment_model,
        classic=classic_from(args),
    )
    if isinstance(result, dict):  # cross-validation
        if args.json:
            print_json(result)
        else:
            mean, std = result["mean"], result["std"]
            print(
                f"{result['folds']}-fold cross-validation: accuracy {mean['val_accuracy']:.4f} "
                f"± {std['val_accuracy']:.4f}, macro-F1 {mean['val_macro_f1']:.4f} ± {std['val_macro_f1']:.4f}"
            )
            print(f"details: {args.out}/cv.json")
        return 0
    summary = {
        "run_dir": str(result.run_dir),
        "steps": result.step,
        "stop_reason": result.stop_reason,
        "seconds": round(result.seconds, 1),
        "best": str(result.best),
        **result.metrics,
    }
    if args.json:
        print_json(summary)
    else:
        from lmforge.eval.perplexity import describe_scores

        print(f"trained {result.step} steps in {result.seconds:.0f}s (stopped by {result.stop_reason})")
        if result.metrics:
            print(f"dev: {describe_scores(result.metrics)}")
        if "dp_epsilon" in result.metrics:
            print(
                f"privacy: epsilon {result.metrics['dp_epsilon']:.2f} spent at delta {result.metrics['dp_delta']:g}"
            )
        print(f"best checkpoint: {result.best}")
    return 0


def run_predict(args) -> int:
    import json
    import sys
    from pathlib import Path

    from lmforge.errors import DataError
    from lmforge.tasks.classify.pipeline import TextClassificationPipeline

    if args.task == "ner":
        from lmforge.cli.ner import run_predict_ner

        return run_predict_ner(args)
    if args.task == "qa":
        from lmforge.cli.qa import run_predict_qa

        return run_predict_qa(args)
    if args.task in ("translate", "summarize"):
        from lmforge.cli.seq2seq_tasks import run_predict_seq2seq

        return run_predict_seq2seq(args)
    clf = TextClassificationPipeline(args.ckpt, device=args.device)
    if args.input != "-" and Path(args.input).suffix.lower() in (".csv", ".tsv", ".jsonl", ".json"):
        rows = clf.predict_file(args.input, fields_from(args, clf.fields))
    else:
        if args.input == "-":
            lines = sys.stdin.read().splitlines()
        else:
            try:
                lines = Path(args.input).read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as exc:
                raise DataError(f"cannot read {args.input} as UTF-8 text ({type(exc).__name__})") from None
        texts = [ln.strip() for ln in lines if ln.strip()]
        if not texts:
            raise DataError(f"{args.input} has no text to classify")
        rows = [{"text": t, "prediction": p} for t, p in zip(texts, clf(texts, top_k=args.top_k))]
    for row in rows:
        if args.json:
            print(json.dumps(row, ensure_ascii=False))
        else:
            pred = row["prediction"]
            shown = ", ".join(
                f"{p['label']} {p['score']:.3f}" for p in (pred if isinstance(pred, list) else [pred])
            )
            print(f"{shown}\t{row['text']}")
    return 0
