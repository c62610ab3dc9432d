"""`lmforge augment`: a labelled file with new examples made from its own (EDA, masked-LM replacements,
back-translation, character typos), labels kept."""

from __future__ import annotations

from lmforge.cli.common import add_overwrite_option, add_verb, print_json

DESCRIPTION = """\
Write FILE plus up to --n new examples per example to --out, in FILE's format (.csv, .tsv, .jsonl, or CoNLL
for NER): only --text-field changes, the label and every other field are kept. Methods:
  eda            Wei & Zou 2019: synonym replacement, random insertion, random swap, random deletion (one per
                 new example, in turn), each changing max(1, int(alpha x words)) words; synonyms are nearest
                 neighbours in --vectors (word2vec/GloVe; `lmforge vectors train` makes one) or WordNet's when
                 nltk's WordNet data is installed; Chinese is cut into words by jieba
  contextual     max(1, int(alpha x words)) words masked and replaced by one of a masked LM's --top-k
                 predictions (--model: an lmforge bert checkpoint with its masked-LM head: pretrained
                 here, or an imported BERT; sentence-embedding exports such as all-MiniLM ship none)
  backtranslate  a round trip through two encoder-decoder translation checkpoints (--via), beam search
  noise          character typos (insertion, deletion, swap, neighbouring key) in max(1, int(alpha x words))
                 words: for robustness tests (--only-new)
CoNLL files (NER) keep a tag per word: eda changes only words tagged O and noise only letters; contextual and
backtranslate are refused there. New examples equal to their original (or to each other) are dropped.
"""

EXAMPLES = """\
  lmforge augment train.tsv --out train.eda.tsv --method eda --vectors vec.txt --text-field sentence --n 4
  lmforge augment train.jsonl --out train.mlm.jsonl --method contextual --model minilm --alpha 0.15
  lmforge augment train.tsv --out train.bt.tsv --method backtranslate --via en-de,de-en --text-field sentence
  lmforge augment dev.tsv --out dev.typos.tsv --method noise --n 1 --only-new --text-field sentence
  lmforge augment conll/train.txt --out conll/train.aug.txt --method eda --vectors vec.txt
"""


def register(subparsers) -> None:
    p = add_verb(
        subparsers,
        "augment",
        help="more labelled examples: EDA, masked-LM replacements, back-translation, typos",
        description=DESCRIPTION,
        examples=EXAMPLES,
        func=run,
    )
    p.add_argument("file", metavar="FILE", help="labelled file: .csv, .tsv, .jsonl, or CoNLL (.txt, .conll)")
    p.add_argument("--out", required=True, metavar="FILE", help="the augmented file (same format)")
    add_method_option(p, "--method", required=True)
    p.add_argument("--n", type=int, default=4, help="new examples per example (at most)")
    p.add_argument(
        "--text-field",
        default="text",
        help="field (or column number, for files without a header) of the text to change; not for CoNLL",
    )
    p.add_argument("--alpha", type=float, default=0.1, help="share of the words each operation changes")
    p.add_argument("--seed", type=int, default=0, help="the same seed gives the same new examples")
    p.add_argument(
        "--vectors", metavar="FILE", help="eda: word vectors whose nearest neighbours are synonyms"
    )
    p.add_argument("--model", metavar="CKPT", help="contextual: a masked-LM (bert) checkpoint")
    p.add_argument(
        "--via",
        metavar="SRC2PIVOT,PIVOT2SRC",
        help="backtranslate: two encoder-decoder translation checkpoints (finetune --task translate)",
    )
    p.add_argument(
        "--top-k", type=int, default=5, help="contextual: draw a replacement from the top K predictions"
    )
    p.add_argument("--num-beams", type=int, default=4, help="backtranslate: beam width of both legs")
    p.add_argument("--only-new", action="store_true", help="write only the new examples, not the originals")
    p.add_argument("--device", default="auto", help="device of the --model / --via checkpoints")
    add_overwrite_option(p, "FILE")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def add_method_option(p, flag: str, required: bool = False) -> None:
    p.add_argument(
        flag,
        required=required,
        metavar="METHOD",
        help="eda | contextual | backtranslate | noise (validated when the command runs)",
    )


def parse_via(value: str | None) -> tuple[str, str] | None:
    from lmforge.errors import ConfigError

    if value is None:
        return None
    parts = [v.strip() for v in value.split(",")]
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"--via takes two checkpoints, SRC2PIVOT,PIVOT2SRC; got {value!r}")
    return parts[0], parts[1]


def run(args) -> int:
    from lmforge.data.augment import AugmentOptions, augment_file

    options = AugmentOptions(
        method=args.method,
        n=args.n,
        alpha=args.alpha,
        seed=args.seed,
        vectors=args.vectors,
        model=args.model,
        via=parse_via(args.via),
        top_k=args.top_k,
        num_beams=args.num_beams,
        device=args.device,
    )
    report = augment_file(
        args.file, args.out, options, args.text_field, only_new=args.only_new, overwrite=args.overwrite
    )
    if args.json:
        print_json(report)
    else:
        print(
            f"{report['method']}: {report['new']:,} new examples from {report['examples']:,} "
            f"({report['short']:,} got fewer than {options.n}) in {report['seconds']:.1f}s -> {report['out']} "
            f"({report['written']:,} examples)"
        )
    return 0
