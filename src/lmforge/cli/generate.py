"""`lmforge generate`: continue prompts with a checkpoint (sampling, greedy or beam search; transformers' option
names)."""

from __future__ import annotations

import argparse
import sys

from lmforge.cli.common import add_compile_option, add_dtype_option, add_verb, check_text, print_json

EXAMPLES = """\
  lmforge generate run --prompt "Once upon a time"
  lmforge generate run --prompt "def parse(" --temperature 0 --max-new-tokens 60 --stop "\\n\\n"
  lmforge generate run --prompts-file prompts.txt --top-p 0.9 --seed 1 --json
  lmforge generate run --prompt "The cat" --num-beams 4 --num-return-sequences 2 --no-repeat-ngram-size 3
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
    p.add_argument(
        "--max-new-tokens",
        type=int,
        help="tokens to generate at most (default: 200, unless --max-length is given)",
    )
    p.add_argument(
        "--max-length", type=int, help="prompt + new tokens at most (the prompt as the model reads it)"
    )
    p.add_argument("--min-new-tokens", type=int, default=0, help="no end-of-sequence before this many tokens")
    # The CLI samples by default (the Python API, like transformers, is greedy): from a terminal one mostly wants
    # to read what a model writes, and greedy decoding of a small model soon repeats itself.
    p.add_argument(
        "--do-sample",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="sample (the default here without --num-beams); --no-do-sample decodes greedily (the Python API's "
        "default); with --num-beams, --do-sample is transformers' beam sampling (default: plain beam search)",
    )
    p.add_argument("--temperature", type=float, default=0.8, help="sampling temperature; 0 = greedy")
    p.add_argument("--top-k", type=int, help="sample among the k most likely tokens only (default: all)")
    p.add_argument(
        "--top-p", type=float, help="nucleus sampling: the most likely tokens covering p (default: off)"
    )
    p.add_argument(
        "--num-beams", type=int, default=1, help="beam search with this many beams (gpt models; 1: off)"
    )
    p.add_argument(
        "--num-return-sequences", type=int, default=1, help="outputs per prompt (samples, or the best beams)"
    )
    p.add_argument(
        "--length-penalty", type=float, default=1.0, help="beam search: > 0 favours longer outputs"
    )
    p.add_argument(
        "--repetition-penalty", type=float, default=1.0, help="CTRL's penalty on seen tokens (1: none)"
    )
    p.add_argument(
        "--no-repeat-ngram-size", type=int, default=0, help="never repeat an n-gram of this size (0: off)"
    )
    p.add_argument(
        "--eos-token-id",
        type=int,
        action="append",
        help="end at this token id (repeatable; default: the tokenizer's end-of-sequence token)",
    )
    p.add_argument("--stop", action="append", help="stop before this string (repeatable)")
    p.add_argument("--seed", type=int, help="random seed for reproducible sampling")
    p.add_argument("--no-cache", action="store_true", help="recompute the whole context every step")
    p.add_argument("--device", default="auto")
    add_compile_option(p)
    add_dtype_option(p)
    p.add_argument(
        "--json",
        action="store_true",
        help="print JSON: [{prompt, completion}, ...] (completions: a list with --num-return-sequences > 1)",
    )


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
    lm = load(args.ckpt, device=args.device, compile=args.compile, dtype=args.dtype)
    beams = args.num_beams > 1
    kwargs = dict(
        max_new_tokens=200
        if args.max_new_tokens is None and args.max_length is None
        else args.max_new_tokens,
        max_length=args.max_length,
        min_new_tokens=args.min_new_tokens,
        # Beam search is deterministic unless --do-sample is given: the sampling default gives way to it.
        do_sample=(not beams if args.do_sample is None else args.do_sample) and args.temperature != 0,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        num_beams=args.num_beams,
        num_return_sequences=args.num_return_sequences,
        length_penalty=args.length_penalty,
        repetition_penalty=args.repetition_penalty,
        no_repeat_ngram_size=args.no_repeat_ngram_size,
        eos_token_id=args.eos_token_id[0]
        if args.eos_token_id and len(args.eos_token_id) == 1
        else args.eos_token_id,
        stop=args.stop,
        seed=args.seed,
        use_cache=not args.no_cache,
    )
    if args.json or beams or args.num_return_sequences > 1:
        completions = lm.generate(prompts, **kwargs)
        if args.json:
            print_json([{"prompt": p, "completion": c} for p, c in zip(prompts, completions)])
            return 0
        for i, (prompt, outs) in enumerate(zip(prompts, completions)):
            for j, out in enumerate(outs if isinstance(outs, list) else [outs]):
                if i or j:
                    print("\n" + "-" * 40)
                print(prompt + out)
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
