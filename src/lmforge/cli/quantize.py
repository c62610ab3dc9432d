"""`lmforge quantize`: int8 / int4 post-training quantization of a checkpoint into a new checkpoint."""

from __future__ import annotations

from lmforge.cli.common import add_overwrite_option, add_verb, print_json

EXAMPLES = """\
  lmforge quantize run/best --method int8-weight --out run-int8
  lmforge quantize run/best --method int4-weight --group-size 64 --out run-int4 --report --data held_out.txt
  lmforge quantize run/best --method dynamic-int8 --out run-dyn --report --data data --json
  lmforge generate run-int4 --prompt "The json module"      # quantized checkpoints load like any other
"""


def register(subparsers) -> None:
    p = add_verb(
        subparsers,
        "quantize",
        help="int8 / int4 quantization of a checkpoint's Linear layers",
        description="Quantize the Linear layers of a GPT (GPT-2 or Llama style) or a fine-tuned classifier and\n"
        "save a new checkpoint that lmforge.load / generate / evaluate read as usual. Embeddings and the\n"
        "output layer stay fp32 unless --include-output.\n"
        "  dynamic-int8  int8 weights and activations (fbgemm dynamic linear; CPU only)\n"
        "  int8-weight   int8 weights, per-output-channel scale, dequantized in forward\n"
        "  int4-weight   4-bit weights, a scale and offset per group of --group-size inputs",
        examples=EXAMPLES,
        func=run,
    )
    p.add_argument("ckpt", metavar="CKPT", help="checkpoint folder or run directory")
    p.add_argument("--method", required=True, help="dynamic-int8, int8-weight or int4-weight")
    p.add_argument("--out", required=True, help="checkpoint folder to write")
    p.add_argument("--group-size", type=int, default=32, help="int4-weight: inputs per scale (32, 64 or 128)")
    p.add_argument("--include-output", action="store_true", help="quantize the output layer too")
    p.add_argument(
        "--report",
        action="store_true",
        help="compare size, greedy tokens/s and perplexity on --data, original vs quantized",
    )
    p.add_argument("--data", help="text file or prepared data directory for --report's perplexity")
    add_overwrite_option(p, "CKPT")
    p.add_argument("--json", action="store_true", help="print JSON")


def run(args) -> int:
    from lmforge.checkpoint import read_config
    from lmforge.compress.quantize import quantize_checkpoint, report
    from lmforge.errors import ConfigError

    if args.report and not args.data:
        raise ConfigError(
            "--report needs --data FILE (a text file or a prepared data directory) for the perplexity"
        )
    out = quantize_checkpoint(
        args.ckpt, args.out, args.method, args.group_size, args.include_output, overwrite=args.overwrite
    )
    spec = read_config(out)["quantization"]
    result = {
        "out": str(out),
        "method": spec["method"],
        "group_size": spec["group_size"],
        "layers": spec["layers"],
    }
    if args.report:
        result["report"] = report(args.ckpt, out, args.data)
    if args.json:
        print_json(result)
        return 0
    print(f"{out}: {spec['method']}, {len(spec['layers'])} Linear layers quantized")
    if args.report:
        print(f"  {'':10} {'size (bytes)':>14} {'tokens/s':>10} {'perplexity':>11}")
        for name, r in result["report"].items():
            tps = "-" if r["tokens_per_s"] is None else f"{r['tokens_per_s']:.1f}"
            ppl = "-" if r["perplexity"] is None else f"{r['perplexity']:.3f}"
            print(f"  {name:10} {r['size_bytes']:>14,} {tps:>10} {ppl:>11}")
    return 0
