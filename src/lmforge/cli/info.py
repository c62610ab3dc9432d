"""`lmforge info`: size and cost of a checkpoint or a preset."""

from __future__ import annotations

from lmforge.cli.common import add_verb, print_json

EXAMPLES = """\
  lmforge info gpt2                 # a preset: the GPT-2 124M shape
  lmforge info run/best --json      # a checkpoint
  lmforge info tiny --model.vocab_size 65
"""


def register(subparsers) -> None:
    p = add_verb(
        subparsers,
        "info",
        help="parameters and FLOPs per token of a checkpoint or preset",
        description="Parameter count and matmul FLOPs per token (forward at full context, and training =\n"
        "forward + backward = 3x forward) of a checkpoint, run directory or named preset.",
        examples=EXAMPLES,
        func=run,
    )
    p.add_argument("target", metavar="CKPT_OR_PRESET")
    p.add_argument("--json", action="store_true", help="print JSON (keys include params, flops_per_token)")
    p.set_defaults(accepts_overrides=True)


def describe(target: str, overrides: list[str] | None = None) -> dict:
    import dataclasses
    from pathlib import Path

    from lmforge.config import build_run_config
    from lmforge.errors import ConfigError
    from lmforge.models.registry import PRESETS, build_model, is_statistical

    info: dict = {}
    if Path(target).exists():
        from lmforge.checkpoint import read_config, resolve_checkpoint

        ckpt = resolve_checkpoint(target)
        config = read_config(ckpt)
        arch, model_cfg = config["arch"], config["model"]
        info.update(
            source=str(ckpt),
            tokenizer=config.get("tokenizer"),
            step=config.get("step"),
            metrics=config.get("metrics"),
        )
        if overrides:
            raise ConfigError("overrides apply to presets, not to checkpoints")
    elif target in PRESETS:
        cfg = build_run_config(preset=target, overrides=overrides)
        arch, model_cfg = cfg.arch, dataclasses.asdict(cfg.model)
        info["source"] = f"preset {target}"
    else:
        raise ConfigError(f"{target} is neither a checkpoint path nor a preset ({', '.join(PRESETS)})")
    if is_statistical(arch) and "source" in info and Path(target).exists():
        from lmforge.checkpoint import load_checkpoint

        model = load_checkpoint(target)[0]  # its size is the fitted tables
    elif Path(target).exists():
        from lmforge.checkpoint import model_from_config

        model = model_from_config(ckpt, config)  # a CheckpointError when config.json's values do not fit
    else:
        model = build_model(arch, model_cfg)
    flops = model.flops_per_token()
    info.update(
        arch=arch,
        params=model.num_params(),
        flops_per_token=flops["training"],
        forward_flops_per_token=flops["forward"],
        model=dataclasses.asdict(model.config),
    )
    return info


def run(args) -> int:
    info = describe(args.target, args.overrides)
    if args.json:
        print_json(info)
        return 0
    m = info["model"]
    print(f"{info['source']}: {info['arch']}, {info['params']:,} parameters")
    if "order" in m:
        print(f"  {m['order']}-gram, interpolated modified Kneser-Ney, vocab {m['vocab_size']}")
    elif "n_head" in m:
        _print_transformer(info)
    else:
        print("  " + ", ".join(f"{k} {v}" for k, v in m.items()))
        print(
            f"  FLOPs per token: {info['forward_flops_per_token']:,} forward, {info['flops_per_token']:,} training"
        )
    if info.get("metrics"):
        print(
            f"  step {info['step']}: "
            + ", ".join(f"{k} {v:.4f}" for k, v in info["metrics"].items() if v is not None)
        )
    return 0


def _print_transformer(info: dict) -> None:
    m = info["model"]
    layers = f"{m['n_layer']}"
    if info["arch"] == "bert":
        kind = "bidirectional encoder (post-LN, learned positions, GELU, masked-LM head)"
    elif info["arch"] == "seq2seq":
        layers += f" + {m['n_decoder_layer'] or m['n_layer']}"
        kind = (
            f"encoder-decoder ({m['norm_position']}-LN, {m['position']} positions, "
            f"{'shared' if m['share_embeddings'] else 'separate'} embeddings)"
        )
    else:
        kind = f"{m['position']} positions, {m['norm']}, {m['activation']}"
    print(
        f"  {layers} layers x {m['n_embd']} wide, {m['n_head']} heads"
        f"{' (' + str(m['n_kv_head']) + ' kv)' if m.get('n_kv_head') else ''}, context {m['block_size']}, "
        f"vocab {m['vocab_size']}, {kind}"
    )
    print(
        f"  FLOPs per token: {info['forward_flops_per_token']:,} forward, "
        f"{info['flops_per_token']:,} training (forward + backward)"
    )
