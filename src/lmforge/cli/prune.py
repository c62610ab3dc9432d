"""`lmforge prune`: magnitude (unstructured) or structured (heads and MLP neurons) pruning into a new checkpoint."""

from __future__ import annotations

from lmforge.cli.common import add_overwrite_option, add_verb, print_json

EXAMPLES = """\
  lmforge prune run/best --method magnitude --amount 0.5 --out run-sparse
  lmforge prune run/best --method magnitude --amount 0.3 --per-layer --out run-sparse --report --data data --json
  lmforge prune run/best --method structured --amount 0.25 --out run-small --data data      # |w*grad| scores
  lmforge prune run/best --method structured --amount 0.25 --out run-small --score l2 --report --data data
  lmforge prune run/best --method magnitude --amount 0.7 --out run-sparse --recover-steps 200 --data data
  lmforge prune run/best --method structured --amount 0.5 --out sweep --report --data held_out.txt \\
      --amounts 0.2,0.4,0.6                                  # a table and sweep/perplexity.png
"""


def register(subparsers) -> None:
    p = add_verb(
        subparsers,
        "prune",
        help="magnitude or structured pruning of a checkpoint, with a size / speed / perplexity report",
        description="Prune a checkpoint into a new one that lmforge.load / generate / evaluate read as usual.\n"
        "  magnitude   zero the smallest |w| of the Linear weights (global threshold, or --per-layer); the\n"
        "              file keeps its size (dense storage), the sparsity is reported\n"
        "  structured  GPT only: remove whole attention heads (with grouped-query attention, a key/value head\n"
        "              and its query heads) and MLP neurons, the same number in every layer, and rebuild the\n"
        "              matrices smaller; scored by the L2 norm of their weights, or by sum |w*grad| with --data\n"
        "Output layers (lm_head, a classifier's head) are not pruned.",
        examples=EXAMPLES,
        func=run,
    )
    p.add_argument("ckpt", metavar="CKPT", help="checkpoint folder or run directory")
    p.add_argument("--method", required=True, help="magnitude or structured")
    p.add_argument("--amount", type=float, required=True, help="fraction to remove, in [0, 1)")
    p.add_argument(
        "--out", required=True, help="checkpoint folder to write (with --amounts: a folder of them)"
    )
    p.add_argument("--per-layer", action="store_true", help="magnitude: the same fraction in every layer")
    p.add_argument(
        "--score",
        default="auto",
        help="structured: importance by l2 (weight norms) or taylor (sum |w*grad| on --data); "
        "auto: taylor when --data is given",
    )
    p.add_argument(
        "--data", help="text file or prepared data directory: --report's perplexity, structured scores"
    )
    p.add_argument(
        "--recover-steps",
        type=int,
        default=0,
        help="fine-tune the pruned model this many steps on --data DIR (zeros stay zero)",
    )
    p.add_argument(
        "--seed",
        type=int,
        help="--recover-steps: seed of the recovery's batches (train.seed; default: the checkpoint run's)",
    )
    p.add_argument(
        "--report",
        action="store_true",
        help="compare size, parameters, sparsity, greedy tokens/s and perplexity, original vs pruned",
    )
    p.add_argument("--amounts", help="with --report: comma-separated amounts to sweep instead of --amount")
    add_overwrite_option(p, "CKPT or --data")
    p.add_argument("--json", action="store_true", help="print JSON")


def _amounts(text: str) -> list[float]:
    from lmforge.compress.prune import check_amount
    from lmforge.errors import ConfigError

    try:
        amounts = [float(a) for a in text.split(",") if a.strip()]
    except ValueError:
        raise ConfigError(
            f"--amounts must be comma-separated numbers such as 0.2,0.4,0.6, got {text!r}"
        ) from None
    for a in amounts:
        check_amount(a)
    return amounts


def run(args) -> int:
    from pathlib import Path

    from lmforge.checkpoint import read_config
    from lmforge.compress.prune import check_amount, describe, prune_checkpoint, sweep
    from lmforge.errors import ConfigError

    check_amount(args.amount)
    if args.report and not args.data:
        raise ConfigError(
            "--report needs --data FILE (a text file or a prepared data directory) for the perplexity"
        )
    if args.amounts and not args.report:
        raise ConfigError("--amounts sweeps for a report; add --report --data FILE")
    if args.amounts:
        rows = sweep(
            args.ckpt,
            args.out,
            args.method,
            _amounts(args.amounts),
            args.per_layer,
            args.data,
            args.score,
            args.recover_steps,
            overwrite=args.overwrite,
            plot_file="perplexity.png",
        )
        png = Path(args.out) / "perplexity.png"
        if args.json:
            print_json({"out": args.out, "method": args.method, "plot": str(png), "rows": rows})
            return 0
        print(f"{args.method} pruning of {args.ckpt}; plot: {png}")
        _table(rows)
        return 0

    out = prune_checkpoint(
        args.ckpt,
        args.out,
        args.method,
        args.amount,
        args.per_layer,
        args.data,
        args.score,
        args.recover_steps,
        overwrite=args.overwrite,
        seed=args.seed,
    )
    result = {"out": str(out), **read_config(out)["pruning"]}
    if args.report:
        result["report"] = {"original": describe(args.ckpt, args.data), "pruned": describe(out, args.data)}
    if args.json:
        print_json(result)
        return 0
    shape = (
        f", heads {result['heads'][0]} -> {result['heads'][1]}, MLP {result['mlp_hidden'][0]} -> "
        f"{result['mlp_hidden'][1]}"
        if args.method == "structured"
        else ""
    )
    print(f"{out}: {args.method} pruning, Linear sparsity {result['linear_sparsity']:.1%}{shape}")
    if args.report:
        _table([{"amount": name, **r} for name, r in result["report"].items()])
    return 0


def _table(rows: list[dict]) -> None:
    print(
        f"  {'':10} {'size (bytes)':>14} {'parameters':>11} {'sparsity':>9} {'tokens/s':>10} {'perplexity':>11}"
    )
    for r in rows:
        tps = "-" if r["tokens_per_s"] is None else f"{r['tokens_per_s']:.1f}"
        ppl = "-" if r["perplexity"] is None else f"{r['perplexity']:.3f}"
        name = r["amount"] if isinstance(r["amount"], str) else f"{r['amount']:g}"
        print(
            f"  {name:10} {r['size_bytes']:>14,} {r['parameters']:>11,} {r['linear_sparsity']:>9.1%} "
            f"{tps:>10} {ppl:>11}"
        )
