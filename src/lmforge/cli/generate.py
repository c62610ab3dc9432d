"""`lmforge generate`: sample text from a checkpoint."""

from __future__ import annotations

import sys

from lmforge.cli.common import add_compile_option, add_verb, check_text, print_json

EXAMPLES = """\
  lmforge generate run --prompt "Once upon a time"
  lmforge generate run --prompt "def parse(" --temperature 0 --max-new-tokens 60 --stop "\\n\\n"
  lmforge generate run --prompts-file prompts.txt --top-p 0.9 --seed 1 --json
"""


def register(subparsers) -> None:
    p = add_verb(
        subparsers,
        "generate",
        help="sample text from a checkpoint",
        description="Continue one prompt (streamed to the terminal) or every line of a prompts file.",
        examples=EXAMPLES,
        func=run,
    )
    p.add_argument("ckpt", metavar="CKPT", help="checkpoint folder or run directory")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--prompt", default="", help="text to continue (empty: start from scratch)")
    src.add_argument("--prompts-file", help="a file with one prompt per line")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--stop", action="append", help="stop before this string (repeatable)")
    p.add_argument("--seed", type=int, help="random seed for reproducible sampling")
    p.add_argument("--no-cache", action="store_true", help="recompute the whole context every step")
    p.add_argument("--device", default="auto")
    add_compile_option(p)
    p.add_argument("--json", action="store_true", help="print JSON: [{prompt, completion}, ...]")


def run(args) -> int:
    from pathlib import Path

    from lmforge.errors import DataError
    from lmforge.lm import load

    check_text(args.prompt, "--prompt")
    for stop in args.stop or []:
        check_text(stop, "--stop")
    if args.prompts_file:
        path = Path(args.prompts_file)
        if not path.is_file():
            raise DataError(f"prompts file {path} does not exist")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(
                f"prompts file {path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})"
            ) from None
        prompts = [line for line in text.splitlines() if line.strip()]
        if not prompts:
            raise DataError(f"prompts file {path} has no prompts")
    else:
        prompts = [args.prompt]
    lm = load(args.ckpt, device=args.device, compile=args.compile)
    kwargs = dict(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        stop=args.stop,
        seed=args.seed,
        use_cache=not args.no_cache,
    )
    if args.json:
        completions = lm.generate(prompts, **kwargs)
        print_json([{"prompt": p, "completion": c} for p, c in zip(prompts, completions)])
        return 0
    for i, prompt in enumerate(prompts):
        pieces = lm.generate(prompt, stream=True, **kwargs)  # raises on a bad prompt before printing anything
        if i:
            print("\n" + "-" * 40)
        sys.stdout.write(prompt)
        for piece in pieces:
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
    return 0
