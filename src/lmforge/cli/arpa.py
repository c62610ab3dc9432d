"""`lmforge export-arpa` / `lmforge import-arpa`: n-gram checkpoints to and from the ARPA format of KenLM and SRILM."""

from __future__ import annotations

from lmforge.cli.common import add_overwrite_option, add_verb

EXPORT_EXAMPLES = """\
  lmforge pretrain --data data --out ngram --arch ngram --model.order 5
  lmforge export-arpa ngram ngram.arpa           # then e.g. kenlm.Model("ngram.arpa")
"""
IMPORT_EXAMPLES = """\
  lmforge import-arpa model.arpa --out ngram-ckpt   # a KenLM/SRILM model, with a word tokenizer from its words
  lmforge evaluate ngram-ckpt --data held_out.txt
"""


def register(subparsers) -> None:
    p = add_verb(
        subparsers,
        "export-arpa",
        help="write an n-gram checkpoint as an ARPA file",
        description="Write an n-gram checkpoint in the ARPA back-off format that KenLM and SRILM read.",
        examples=EXPORT_EXAMPLES,
        func=run_export,
    )
    p.add_argument("ckpt", metavar="CKPT", help="n-gram checkpoint folder or run directory")
    p.add_argument("out", metavar="OUT.arpa")
    add_overwrite_option(p, "CKPT")
    p = add_verb(
        subparsers,
        "import-arpa",
        help="turn an ARPA file into an n-gram checkpoint",
        description="Read an ARPA n-gram model (lmforge's, KenLM's or SRILM's) into a checkpoint folder\n"
        "with a word-level tokenizer made from its vocabulary (<s>, </s>, <unk> become bos, eos, unk).",
        examples=IMPORT_EXAMPLES,
        func=run_import,
    )
    p.add_argument("arpa", metavar="IN.arpa")
    p.add_argument("--out", required=True, help="checkpoint folder to write")
    add_overwrite_option(p, "IN.arpa")


def arpa_name(token: str) -> str:
    """ARPA words cannot hold whitespace: name such (character-level) tokens by their code points."""
    if token and not any(c.isspace() for c in token):
        return token
    return "".join(f"<U+{ord(c):04X}>" for c in token) or "<empty>"


def run_export(args) -> int:
    from lmforge.errors import ConfigError
    from lmforge.lm import load
    from lmforge.outputs import check_output, staged

    check_output(args.out, folder=False, overwrite=args.overwrite, inputs=[args.ckpt], flag="OUT.arpa")
    lm = load(args.ckpt, device="cpu")
    if lm.config.get("arch") != "ngram":
        raise ConfigError(
            f"{args.ckpt} is a {lm.config.get('arch')} model; only n-gram checkpoints export to ARPA"
        )
    with staged(args.out, folder=False) as tmp:
        lm.model.lm.to_arpa(tmp, lambda i: arpa_name(lm.tokenizer.id_to_token(i) or f"<id{i}>"))
    print(f"wrote {args.out} ({lm.model.config.order}-gram, {lm.tokenizer.vocab_size} words)")
    return 0


def run_import(args) -> int:
    from pathlib import Path

    from lmforge.checkpoint import save_checkpoint
    from lmforge.errors import CheckpointError
    from lmforge.models.arpa import read_arpa
    from lmforge.models.ngram import NGramLM
    from lmforge.models.ngram_model import NGram, NGramConfig
    from lmforge.outputs import check_output
    from lmforge.tokenizers.tokenizer import SPECIAL_TOKENS, Tokenizer, word_tokenizer

    check_output(args.out, overwrite=args.overwrite, inputs=[args.arpa], error=CheckpointError)
    _, words, _ = read_arpa(args.arpa)
    roles = {"<s>": "bos", "</s>": "eos", "<unk>": "unk"}
    plain = [w for w in words if w not in roles and w not in SPECIAL_TOKENS.values()]
    tokenizer = Tokenizer(word_tokenizer(plain))
    lookup = {w: tokenizer.special_ids[r] for w, r in roles.items()}
    lm = NGramLM.from_arpa(args.arpa, lambda w: lookup[w] if w in lookup else tokenizer.token_to_id(w))
    cfg = NGramConfig(
        order=lm.order, vocab_size=lm.vocab_size, bos_id=lm.bos_id, eos_id=lm.eos_id, unk_id=lm.unk_id
    )
    model = NGram(cfg)
    model.lm = lm
    import dataclasses

    config = {
        "arch": "ngram",
        "model": dataclasses.asdict(cfg),
        "source": {"arpa": str(Path(args.arpa).resolve())},
    }
    save_checkpoint(args.out, model, tokenizer, config, overwrite=args.overwrite, inputs=(args.arpa,))
    print(f"wrote {args.out} ({lm.order}-gram, {len(plain)} words from {args.arpa})")
    return 0
