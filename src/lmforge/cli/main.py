"""Entry point of the `lmforge` command: builds the parser from the verb modules and maps errors to exit codes."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import re
import sys

from lmforge.cli.common import HelpFormatter
from lmforge.errors import LmforgeError
from lmforge.outputs import describe_os_error
from lmforge.version import __version__

# Each module defines `register(subparsers)`, which adds its verb(s) with `set_defaults(func=run)`.
VERB_MODULES = [
    "quickstart",
    "prepare",
    "scrub",
    "split",
    "augment",
    "tokenizer",
    "pretrain",
    "evaluate",
    "generate",
    "chat",
    "info",
    "arpa",
    "hf",
    "finetune",
    "compare",
    "quantize",
    "prune",
    "distill",
    "export",
    "serve",
    "explain",
    "tune",
    "vectors",
]

DESCRIPTION = """\
lmforge takes a language model from raw text to a model people use.

The lifecycle, one verb per stage:
  prepare     clean text, train a tokenizer, write token shards
  scrub       replace personal data and secrets in text with typed placeholders (<EMAIL>, <PHONE>, ...)
  split       a labelled file into train/dev/test files (stratified by label, leak-free by group)
  augment     more training examples: EDA, masked-LM replacements, back-translation, typos
  tokenizer   train / encode / decode / inspect tokenizers
  pretrain    train a model on token shards (resumable)
  evaluate    loss, perplexity and bits per byte of a checkpoint (--task: classification, NER, QA, BLEU/ROUGE)
  generate    sample text from a checkpoint
  chat        an interactive chat with a chat fine-tuned checkpoint (history, streaming, /reset, /system)
  info        parameters and FLOPs of a checkpoint or preset
  export-arpa / import-arpa   n-gram models to and from KenLM/SRILM's ARPA format
  import-hf / export-hf       Hugging Face transformers checkpoints in and out
  finetune    fine-tune for a task: classify, nli, ner, qa, translate, summarize, chat
  predict     predictions of a fine-tuned model (labels, entities, answers, translations)
  compare     train several families on the same data and budget, side by side
  quantize    int8 / int4 quantization of a checkpoint, with a size / speed / perplexity report
  prune       magnitude or structured (heads, MLP neurons) pruning of a checkpoint, with the same report
  distill     train a smaller GPT or classifier against a teacher's soft targets, teacher vs student report
  export      a GPT or classifier as ONNX graphs for onnxruntime (--format onnx)
  serve       an OpenAI-compatible HTTP server (and playground) for a checkpoint
  explain     why a model decided: attention maps, Integrated Gradients and Shapley values over words
  tune        hyperparameter search over pretrain / finetune runs (Optuna: grid, TPE, CMA-ES, ...)
  vectors     train word2vec / fastText vectors, nearest neighbours, analogies (GloVe files too)
  quickstart  all of the above on a built-in corpus, in about 5 minutes
"""

EPILOG = """\
examples:
  lmforge quickstart
  lmforge prepare corpus.txt --out data --tokenizer bpe --vocab-size 4096
  lmforge pretrain --data data --out run --preset tiny --max-minutes 10
  lmforge evaluate run --data data --json
  lmforge generate run --prompt "Once upon a time" --max-new-tokens 100
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lmforge", description=DESCRIPTION, epilog=EPILOG, formatter_class=HelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"lmforge {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    subparsers = parser.add_subparsers(dest="verb", metavar="VERB")
    for name in VERB_MODULES:
        importlib.import_module(f"lmforge.cli.{name}").register(subparsers)
    return parser


# Verbs that train through the one loop (train/trainer.py) and so run as one job under torchrun; any other verb
# launched on several processes would run as N identical copies racing on the same files, and is refused.
DISTRIBUTED_VERBS = ("pretrain", "finetune", "distill")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.verb is None:
        parser.print_help()
        return 0
    if extra and not getattr(args, "accepts_overrides", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.overrides = extra
    world, rank = os.environ.get("WORLD_SIZE", "1"), os.environ.get("RANK", "0")
    if world not in ("", "0", "1") and args.verb not in DISTRIBUTED_VERBS:
        print(
            f"error: `lmforge {args.verb}` cannot run on several processes (WORLD_SIZE={world}); only "
            f"{', '.join(DISTRIBUTED_VERBS)} train distributed: run it without torchrun",
            file=sys.stderr,
        )
        return 2
    # Under torchrun, rank 0 speaks for the run: the other ranks' results would repeat it (errors still show).
    quiet = open(os.devnull, "w") if rank not in ("", "0") else None  # noqa: SIM115 (closed below)
    try:
        with contextlib.redirect_stdout(quiet) if quiet else contextlib.nullcontext():
            result = args.func(args)
        return int(result or 0)
    except LmforgeError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `lmforge generate ... | head`
        return 0
    except OSError as exc:  # a full disk, a read-only folder, a file where a folder should be...
        if args.debug:
            raise
        print(f"error: {describe_os_error(exc)}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as exc:
        if args.debug or not _out_of_memory(exc):
            raise
        print(f"error: {_memory_message(exc)}", file=sys.stderr)
        return 2
    finally:
        if quiet is not None:
            quiet.close()
        _leave_process_group()


def _leave_process_group() -> None:
    """Leave the process group a distributed run joined (torch warns at exit otherwise); torch is not imported
    by verbs that never loaded it."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _out_of_memory(exc: BaseException) -> bool:
    """A failed allocation: MemoryError, torch.OutOfMemoryError (CUDA) or the CPU allocator's RuntimeError."""
    text = str(exc).lower()
    return isinstance(exc, MemoryError) or any(
        marker in text for marker in ("out of memory", "can't allocate memory", "not enough memory")
    )


def _memory_message(exc: BaseException) -> str:
    first = (str(exc).strip().splitlines() or [""])[0]
    tried = re.search(r"allocate (\d+) bytes", first)
    what = f" (an allocation of {int(tried.group(1)) / 2**30:,.1f} GiB failed)" if tried else ""
    return f"out of memory{what}; lower the batch size, the model size or the amount of data held at once"


if __name__ == "__main__":
    raise SystemExit(main())
