"""`lmforge tokenizer train|encode|decode|info`: train, use and inspect tokenizers on their own."""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path

from lmforge.cli.common import add_overwrite_option, add_verb, check_text, print_json
from lmforge.errors import TokenizerError

# Files read from a folder given to `train` (a file named explicitly is read whatever its suffix).
CHUNK_CHARS = 1 << 20  # texts are handed to the trainer in pieces of about 1M characters

DESCRIPTION = """\
Train, use and inspect tokenizers on their own (`lmforge prepare` trains one as part of preparing data).

TOKENIZER is a tokenizer.json file, or a folder that has one (a data directory or a checkpoint).
Every tokenizer lmforge trains has the special tokens <|pad|> <|unk|> <|bos|> <|eos|> <|mask|> with
ids 0 to 4, and is a plain Hugging Face tokenizer.json that `tokenizers.Tokenizer.from_file` loads.
"""

EXAMPLES = """\
  lmforge tokenizer train corpus.txt --kind bpe --vocab-size 4096 --out tok
  lmforge tokenizer info tok
  lmforge tokenizer encode tok --text "Hello world"
  lmforge tokenizer decode tok --ids "15496 995"
"""

TRAIN_DESCRIPTION = """\
Train a tokenizer on text files and save it as tokenizer.json.

INPUT is a file or a folder. Folders are read recursively: text files (.txt .md .rst ...) as UTF-8 and
JSON Lines files (.jsonl) taking the --text-field of each record. A file named explicitly is read as
JSON Lines if it ends in .jsonl, and as UTF-8 text otherwise.

Kinds:
  bpe        byte-level BPE (GPT-2 style): any text, no unknown token, lossless; vocab size >= 261
  wordpiece  WordPiece (BERT style): splits words and punctuation; rare characters become <|unk|>
  unigram    Unigram language model (SentencePiece style); spaces are kept as "▁"
  char       one token per character; --vocab-size keeps the most frequent characters
"""

TRAIN_EXAMPLES = """\
  lmforge tokenizer train corpus.txt --out tok
  lmforge tokenizer train books/ notes.md --kind unigram --vocab-size 8000 --out tok/tokenizer.json
  lmforge tokenizer train data.jsonl --text-field content --kind wordpiece --out tok
  lmforge tokenizer train corpus.txt --kind char --out char-tok
"""

ENCODE_DESCRIPTION = """\
Print the token ids of a text, space-separated (with --json: ids and tokens).
The text is --text, the content of --file, or standard input. No special token is added.
"""

ENCODE_EXAMPLES = """\
  lmforge tokenizer encode tok --text "Hello world"
  lmforge tokenizer encode data --file README.md --json
  echo "Hello world" | lmforge tokenizer encode run/tokenizer.json
"""

DECODE_DESCRIPTION = """\
Print the text of token ids given by --ids or on standard input: whole numbers separated by spaces or
commas (a JSON list, or the JSON output of `lmforge tokenizer encode --json`, works too).
Special tokens are left out unless --keep-special is given.
"""

DECODE_EXAMPLES = """\
  lmforge tokenizer decode tok --ids "15496 995"
  lmforge tokenizer decode tok --ids "[2, 15496, 995, 3]" --keep-special
  lmforge tokenizer encode tok --text "Hello" | lmforge tokenizer decode tok
"""

INFO_DESCRIPTION = """\
Show a tokenizer's kind, vocabulary size, special tokens with their ids and its sha256 fingerprint
(the fingerprint data directories and checkpoints record, to check that they match).
"""

INFO_EXAMPLES = """\
  lmforge tokenizer info tok
  lmforge tokenizer info run --json
"""


def register(subparsers) -> None:
    parser = add_verb(
        subparsers,
        "tokenizer",
        help="train / encode / decode / inspect tokenizers",
        description=DESCRIPTION,
        examples=EXAMPLES,
        func=lambda args: _print_help(parser),
    )
    actions = parser.add_subparsers(dest="tokenizer_action", metavar="ACTION")

    p = add_verb(
        actions, "train", "train a tokenizer on text files", TRAIN_DESCRIPTION, TRAIN_EXAMPLES, run_train
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="text or JSON Lines files, or folders of them")
    p.add_argument("--kind", default="bpe", metavar="KIND", help="bpe, wordpiece, unigram or char")
    p.add_argument(
        "--vocab-size",
        type=int,
        default=None,
        metavar="N",
        help="largest vocabulary, special tokens included; if not given 8192, or every character seen for char",
    )
    p.add_argument(
        "--min-frequency",
        type=int,
        default=2,
        metavar="N",
        help="bpe/wordpiece: merge only pairs seen N times",
    )
    p.add_argument(
        "--out", required=True, metavar="DIR_OR_FILE", help="folder for tokenizer.json, or a .json path"
    )
    p.add_argument(
        "--text-field", default="text", metavar="FIELD", help="field of JSON Lines records to read"
    )
    add_overwrite_option(p, "an input")
    p.add_argument("--json", action="store_true", help="print the result as JSON")

    p = add_verb(
        actions, "encode", "print the token ids of a text", ENCODE_DESCRIPTION, ENCODE_EXAMPLES, run_encode
    )
    p.add_argument("tokenizer", metavar="TOKENIZER", help="tokenizer.json or a folder that has one")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--text", help="the text to encode")
    source.add_argument("--file", metavar="FILE", help="a UTF-8 file to encode")
    p.add_argument("--json", action="store_true", help="print ids and tokens as JSON")

    p = add_verb(
        actions, "decode", "print the text of token ids", DECODE_DESCRIPTION, DECODE_EXAMPLES, run_decode
    )
    p.add_argument("tokenizer", metavar="TOKENIZER", help="tokenizer.json or a folder that has one")
    p.add_argument("--ids", help='token ids, e.g. "1 2 3" (default: read them from standard input)')
    p.add_argument(
        "--keep-special", action="store_true", help="keep special tokens such as <|eos|> in the text"
    )

    p = add_verb(
        actions, "info", "kind, vocabulary and special tokens", INFO_DESCRIPTION, INFO_EXAMPLES, run_info
    )
    p.add_argument("tokenizer", metavar="TOKENIZER", help="tokenizer.json or a folder that has one")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 0


# ---- reading training text ------------------------------------------------------------------------


def iter_texts(inputs: list[str], text_field: str = "text") -> Iterator[str]:
    """Stream the texts of files, folders, globs and record files (by `text_field`), in pieces of bounded
    size, through the same readers as `lmforge prepare`."""
    from lmforge.data.sources import expand_inputs, iter_pieces

    for source in expand_inputs(inputs):
        for piece, _ in iter_pieces(source, text_field, "file", "utf-8", CHUNK_CHARS):
            yield piece


# ---- the actions --------------------------------------------------------------------------------


def run_train(args) -> int:
    from lmforge.tokenizers.tokenizer import KINDS, MIN_BPE_VOCAB_SIZE, SPECIAL_TOKENS, Tokenizer

    # Check the options before reading a possibly large corpus.
    if args.kind not in KINDS:
        raise TokenizerError(f"unknown tokenizer kind {args.kind!r}; choose one of {', '.join(KINDS)}")
    from lmforge.data.prepare import MAX_VOCAB_SIZE

    if args.vocab_size is not None:
        smallest = MIN_BPE_VOCAB_SIZE if args.kind == "bpe" else len(SPECIAL_TOKENS) + 1
        if args.vocab_size < smallest:
            raise TokenizerError(f"--vocab-size must be at least {smallest} for a {args.kind} tokenizer")
        if args.vocab_size > MAX_VOCAB_SIZE:
            raise TokenizerError(
                f"--vocab-size {args.vocab_size:,} is too large; a new tokenizer has at most {MAX_VOCAB_SIZE:,} tokens"
            )
    if args.min_frequency < 1:
        raise TokenizerError("--min-frequency must be 1 or more")
    from lmforge.data.sources import expand_inputs
    from lmforge.outputs import check_output

    out = Path(args.out)
    folder = out.is_dir() or out.suffix != ".json"  # Tokenizer.save's rule: a folder gets a tokenizer.json
    if folder:
        check_output(
            out, own=lambda _: True, error=TokenizerError
        )  # a folder: only a file, or unwritable, fails
    files = expand_inputs(args.inputs)  # missing or unreadable inputs fail here, before any training
    target = out / "tokenizer.json" if folder else out
    check_output(
        target, folder=False, overwrite=args.overwrite, inputs=[f.path for f in files], error=TokenizerError
    )
    tok = Tokenizer.train(
        args.kind, iter_texts(args.inputs, args.text_field), args.vocab_size, args.min_frequency
    )
    path = tok.save(target)
    result = {"kind": tok.kind, "vocab_size": tok.vocab_size, "path": str(path), "files": len(files)}
    if args.json:
        print_json(result)
    else:
        print(f"trained a {tok.kind} tokenizer of {tok.vocab_size} tokens on {len(files)} file(s)")
        print(f"saved {path}")
    return 0


def _load(name: str):
    from lmforge.tokenizers.tokenizer import Tokenizer

    return Tokenizer.load(name)


def _read_stdin(what: str) -> str:
    if sys.stdin is None or sys.stdin.isatty():
        raise TokenizerError(
            f"no {what} given; use {'--text or --file' if what == 'text' else '--ids'} or pipe it in"
        )
    try:
        return sys.stdin.read()
    except UnicodeDecodeError:
        raise TokenizerError("standard input is not UTF-8 text") from None


def run_encode(args) -> int:
    check_text(args.text, "--text")
    tok = _load(args.tokenizer)
    if args.text is not None:
        text = args.text
    elif args.file is not None:
        try:
            with open(args.file, encoding="utf-8", newline="") as fh:
                text = fh.read()
        except FileNotFoundError:
            raise TokenizerError(f"no such file: {args.file}") from None
        except UnicodeDecodeError as exc:
            raise TokenizerError(f"{args.file} is not UTF-8 text (bad byte at offset {exc.start})") from None
        except OSError as exc:
            raise TokenizerError(f"cannot read {args.file} ({exc.strerror or exc})") from None
    else:
        text = _read_stdin("text")
    ids = tok.encode(text)
    if args.json:
        print_json({"ids": ids, "tokens": [tok.id_to_token(i) for i in ids], "count": len(ids)})
    else:
        print(" ".join(map(str, ids)))
    return 0


_ID_SEPARATORS = re.compile(r"[\s,\[\]]+")


def parse_ids(text: str, vocab_size: int) -> list[int]:
    """Token ids from "1 2 3", "1,2,3", "[1, 2, 3]" or `{"ids": [...]}`, each checked against the vocabulary."""
    text = text.strip()
    if text.startswith("{"):
        try:
            items = json.loads(text)["ids"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise TokenizerError('token ids in JSON must look like {"ids": [1, 2, 3]}') from None
        if not isinstance(items, list):
            raise TokenizerError('token ids in JSON must look like {"ids": [1, 2, 3]}')
        pieces = [str(i) for i in items]
    else:
        pieces = [p for p in _ID_SEPARATORS.split(text) if p]
    ids = []
    for piece in pieces:
        try:
            i = int(piece)
        except ValueError:
            raise TokenizerError(
                f"{piece[:40]!r} is not a token id; give whole numbers separated by spaces"
            ) from None
        if not 0 <= i < vocab_size:
            raise TokenizerError(
                f"token id {i} is out of range; this tokenizer has ids 0 to {vocab_size - 1}"
            )
        ids.append(i)
    return ids


def run_decode(args) -> int:
    tok = _load(args.tokenizer)
    raw = args.ids if args.ids is not None else _read_stdin("token ids")
    ids = parse_ids(raw, tok.vocab_size)
    text = tok.decode(ids, skip_special_tokens=not args.keep_special)
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0


def run_info(args) -> int:
    tok = _load(args.tokenizer)
    info = tok.info()
    path = Path(args.tokenizer)
    info = {"path": str(path / "tokenizer.json" if path.is_dir() else path), **info}
    if args.json:
        print_json(info)
        return 0
    print(f"path        {info['path']}")
    print(f"kind        {info['kind']}")
    print(f"vocab size  {info['vocab_size']}")
    print(f"sha256      {info['sha256']}")
    print("special tokens:")
    if not info["special_tokens"]:
        print("  (none)")
    for role, entry in info["special_tokens"].items():
        print(f"  {role:<5} {entry['id']:>6}  {entry['token']}")
    return 0
