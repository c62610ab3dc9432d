"""Pieces shared by the verb modules."""

from __future__ import annotations

import argparse
import json
import sys


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the hand-written layout of descriptions and examples, and shows defaults: not for on/off flags (the
    stored value of `--no-dedup` is True while dedup is on: "(default: True)" would say the opposite of what
    happens; a flag is off unless given), nor where the help already states its default in words."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.nargs == 0 or "default" in text:
            return text
        return super()._get_help_string(action)


def add_verb(
    subparsers, name: str, help: str, description: str, examples: str, func
) -> argparse.ArgumentParser:
    """Add a verb with a description, an `examples:` epilog and `func(args)` as its action."""
    parser = subparsers.add_parser(
        name,
        help=help,
        description=description,
        epilog="examples:\n" + examples,
        formatter_class=HelpFormatter,
    )
    parser.set_defaults(func=func)
    return parser


def print_json(obj) -> None:
    json.dump(obj, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")


def add_compile_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--compile",
        default="auto",
        choices=["auto", "true", "false"],
        help="torch.compile the decoding step: auto = on CUDA only; true on a CPU compiles for tens of "
        "seconds (less after a restart: kept in ~/.cache/lmforge/compile, $LMFORGE_COMPILE_CACHE), then decodes "
        "1.1-1.4x faster (worth it for servers and long outputs); serve and chat compile in the background and "
        "decode eagerly until it is done, generate waits for it",
    )


DTYPE_AUTO = (
    "bf16 on CUDA and, for gpt models, on CPUs with bf16 units (AVX512-BF16 or AMX; measured faster there), "
    "fp32 elsewhere"
)


def add_dtype_option(p: argparse.ArgumentParser, what: str = "", auto: str = DTYPE_AUTO) -> None:
    p.add_argument(
        "--dtype",
        default="auto",
        metavar="{auto,bf16,fp16,fp32}",  # checked by device.inference_dtype: a bad value is one error line
        help=f"weight (and KV cache) dtype{what}: auto = {auto}; bf16 is refused on a CPU without bf16 units "
        "(it would run ~150x slower), fp16 is for CUDA only",
    )


def add_overwrite_option(p: argparse.ArgumentParser, inputs: str) -> None:
    """--overwrite: replace an existing output (lmforge.outputs' rule: once the new one is complete; never one that
    holds the command's `inputs`)."""
    p.add_argument(
        "--overwrite",
        action="store_true",
        help=f"replace an existing output, once the new one is complete (never one that holds {inputs})",
    )


def check_text(value: str | None, flag: str) -> None:
    """Refuse command-line text that is not valid UTF-8 (its undecodable bytes reach Python as surrogates)."""
    if value is None:
        return
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = ord(value[exc.start])
        byte = f"byte 0x{bad - 0xDC00:02x}" if 0xDC80 <= bad <= 0xDCFF else f"character U+{bad:04X}"
        from lmforge.errors import ConfigError

        raise ConfigError(
            f"{flag} is not valid UTF-8 text ({byte} at position {exc.start}); check the terminal's encoding"
        ) from None
