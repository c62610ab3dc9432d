"""`lmforge export --format onnx`: a checkpoint as ONNX graphs that onnxruntime runs without lmforge."""

from __future__ import annotations

from lmforge.cli.common import add_overwrite_option, add_verb, print_json

EXAMPLES = """\
  lmforge export run/best --format onnx --out run-onnx --check
  lmforge export sst2-clf --format onnx --out clf-onnx --check --json
  python -c "import onnxruntime as ort; print([i.name for i in ort.InferenceSession('run-onnx/model.onnx').get_inputs()])"
"""


def register(subparsers) -> None:
    p = add_verb(
        subparsers,
        "export",
        help="export a GPT or a classifier checkpoint to ONNX (onnxruntime)",
        description="Write an ONNX folder: a GPT decoder as model.onnx (input_ids -> logits, present keys/values)\n"
        "and decode.onnx (new tokens + past -> logits, present), a classifier as model.onnx (input_ids,\n"
        "attention_mask[, token_type_ids] -> logits); with tokenizer.json and a config.json describing them.\n"
        "(export-hf and export-arpa write Hugging Face and ARPA formats.)",
        examples=EXAMPLES,
        func=run,
    )
    p.add_argument("ckpt", metavar="CKPT", help="checkpoint folder or run directory")
    p.add_argument("--format", required=True, help="onnx (the only one so far)")
    p.add_argument("--out", required=True, help="folder to write (new or empty)")
    add_overwrite_option(p, "CKPT")
    p.add_argument(
        "--check",
        action="store_true",
        help="compare onnxruntime with PyTorch on random inputs (max abs diff <= 1e-4) and time both",
    )
    p.add_argument("--json", action="store_true", help="print JSON")


def run(args) -> int:
    from lmforge.errors import ConfigError

    if args.format != "onnx":
        raise ConfigError(
            f"unknown export format {args.format!r}; onnx is supported (see also export-hf, export-arpa)"
        )
    from lmforge.export.onnx import check_onnx, export_onnx

    out = export_onnx(args.ckpt, args.out, overwrite=args.overwrite)
    result = {"out": str(out), "files": sorted(p.name for p in out.iterdir())}
    if args.check:
        result["check"] = check_onnx(out, args.ckpt)
    if args.json:
        print_json(result)
    else:
        print(f"{out}: {', '.join(result['files'])}")
        c = result.get("check")
        if c:
            verdict = "ok" if c["ok"] else "MISMATCH"
            print(
                f"  logits max abs diff {c['max_abs_diff']:.2e} ({verdict}, tolerance {c['tolerance']:.0e})"
            )
            if "greedy_tokens_match" in c:
                print(
                    f"  greedy decoding via decode.onnx, {c['greedy_steps']} steps: tokens "
                    f"{'match' if c['greedy_tokens_match'] else 'DIFFER from'} PyTorch"
                )
            print(
                f"  {c['timed_input']}: onnxruntime {c['onnxruntime_ms']:.2f} ms, "
                f"PyTorch eager {c['torch_ms']:.2f} ms"
            )
    if args.check and not result["check"]["ok"]:
        return 1
    return 0
