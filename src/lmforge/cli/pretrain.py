"""`lmforge pretrain`: train a model on prepared token shards."""

from __future__ import annotations

from lmforge.cli.common import add_verb, print_json

EXAMPLES = """\
  lmforge pretrain --data data --out run --preset tiny --max-steps 2000
  lmforge pretrain --data data --out run --config configs/shakespeare-char.yaml --optim.lr 3e-4
  lmforge pretrain --data data --out run --preset llama-tiny --max-minutes 10 --train.batch_size 16
  lmforge pretrain --data data --out run --resume           # continue exactly where it stopped
  lmforge pretrain --data data --out ngram --arch ngram --model.order 5   # a Kneser-Ney 5-gram, one counting pass
  # continued pretraining: data prepared with the checkpoint's tokenizer, a new run from its weights
  lmforge prepare my.txt --out data-gpt2 --tokenizer gpt2-ckpt
  lmforge pretrain --data data-gpt2 --out gpt2-more --init-from gpt2-ckpt --max-steps 500 --optim.lr 3e-4

Any config key can be overridden with --section.key VALUE (sections: model, optim, train), e.g.
  --model.n_layer 4 --model.n_head 4 --model.n_embd 128 --model.block_size 64 --model.dropout 0
  --train.batch_size 12 --train.eval_every 250 --optim.lr 1e-3 --optim.schedule cosine
Ctrl-C saves a checkpoint before exiting; --resume continues from it (the command's own --model.* flags may be
repeated; changing the model is refused). With --init-from the model is the checkpoint's: only model.dropout, the
masking settings, a shorter model.block_size, optim.* and train.* apply.
"""


def register(subparsers) -> None:
    from lmforge.models.registry import PRESETS

    p = add_verb(
        subparsers,
        "pretrain",
        help="train a model on prepared token shards",
        description="Pretrain a language model on a data directory made by `lmforge prepare`.\n\n"
        "presets: " + ", ".join(f"{k} ({v[2]})" for k, v in PRESETS.items()),
        examples=EXAMPLES,
        func=run,
    )
    p.add_argument("--data", required=True, help="data directory written by `lmforge prepare`")
    p.add_argument("--out", required=True, help="run directory for checkpoints, metrics and TensorBoard logs")
    p.add_argument("--config", help="YAML config file with model/optim/train sections")
    p.add_argument("--arch", help="architecture (default: gpt)")
    p.add_argument("--preset", help="named model size (see above)")
    p.add_argument("--max-steps", type=int, help="optimizer steps (train.max_steps)")
    p.add_argument(
        "--max-minutes",
        type=float,
        help="stop after this much training time (train.max_minutes); the "
        "learning rate then decays to the end of the time when that comes before --max-steps",
    )
    p.add_argument(
        "--init-from",
        metavar="CKPT",
        help="start a new run from this checkpoint's weights (a run directory or checkpoint folder: a run's, an "
        "import-hf, a save_pretrained export, a pruned one) with a fresh optimizer and schedule; its model "
        "config is kept, and --data must be prepared with its tokenizer (lmforge prepare --tokenizer CKPT)",
    )
    p.add_argument(
        "--seed",
        type=int,
        help="seed of the initial weights and the batches (train.seed; default 1337)",
    )
    p.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its latest checkpoint"
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(accepts_overrides=True)


def run(args) -> int:
    from lmforge.tasks.lm.run import pretrain

    result = pretrain(
        data=args.data,
        out=args.out,
        config=args.config,
        arch=args.arch,
        preset=args.preset,
        overrides=args.overrides,
        max_steps=args.max_steps,
        max_minutes=args.max_minutes,
        resume=args.resume,
        progress=not args.quiet,
        init_from=args.init_from,
        seed=args.seed,
    )
    summary = {
        "run_dir": str(result.run_dir),
        "step": result.step,
        "tokens": result.tokens,
        "stop_reason": result.stop_reason,
        "seconds": round(result.seconds, 2),
        "tokens_per_s": round(result.tokens_per_s, 1),
        "latest": str(result.latest) if result.latest else None,
        "best": str(result.best) if result.best else None,
        **result.metrics,
    }
    if args.json:
        print_json(summary)
    else:
        if result.stop_reason == "fitted":
            print(
                f"fitted on {result.tokens:,} tokens in {result.seconds:.1f}s ({result.tokens_per_s:,.0f} tokens/s)"
            )
        else:
            print(
                f"trained {result.step} steps ({result.tokens:,} tokens, {result.tokens_per_s:,.0f} tokens/s, "
                f"{result.seconds:.0f}s; stopped by {result.stop_reason})"
            )
        if result.metrics:
            from lmforge.eval.perplexity import describe_scores

            print(f"validation: {describe_scores(result.metrics)}")
        print(f"checkpoints: {result.run_dir}/latest, {result.run_dir}/best")
    return 0
