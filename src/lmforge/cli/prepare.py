"""`lmforge prepare`: clean a corpus, train or load a tokenizer, write train/val(/test) token shards."""

from __future__ import annotations

from lmforge.cli.common import add_verb, print_json

DESCRIPTION = """\
Turn raw text into a data directory the trainer reads: DATA_DIR/manifest.json, DATA_DIR/tokenizer.json
and DATA_DIR/{train,val}/shard-NNNNN.bin (token ids, each document followed by the eos token; test/ too
with --test-fraction).

INPUT can be text files (.txt, .md, ...), HTML files, folders (read recursively, in sorted order),
globs ("corpus/**/*.txt"), .jsonl/.json/.csv/.tsv/.parquet files (the --text-field column), or - for stdin.

Cleaning (each step can be switched off): HTML to text, Unicode normalisation, whitespace (control
characters, \\r\\n, trailing spaces, runs of blank lines; indentation is kept), exact deduplication;
optionally near-duplicate removal (MinHash), Chinese word segmentation (jieba) and stopword removal.
The work is streamed: memory does not grow with the size of the corpus. The output appears only when
everything succeeded.
"""

EXAMPLES = """\
  lmforge prepare corpus.txt --out data --tokenizer bpe --vocab-size 4096
  lmforge prepare shakespeare.txt --out data-char --tokenizer char     # one document: the last 10% is val
  lmforge prepare books/ --out data --val-fraction 0.1 --test-fraction 0.1   # then: evaluate RUN --split test
  lmforge prepare books/ --out data --doc-split paragraph --near-dedup 0.8
  lmforge prepare "dumps/*.jsonl" --out data --text-field content --tokenizer unigram
  lmforge prepare pages/ --out data --html on --normalize NFKC
  lmforge prepare news_zh.txt --out data-zh --segment --stopwords zh --doc-split line
  cat notes.txt | lmforge prepare - --out data --tokenizer other-data/tokenizer.json
  lmforge prepare ptb.train.txt --val ptb.valid.txt --out ptb --tokenizer word --add-eos
"""


def register(subparsers) -> None:
    p = add_verb(
        subparsers,
        "prepare",
        help="clean text, train a tokenizer, write token shards",
        description=DESCRIPTION,
        examples=EXAMPLES,
        func=run,
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="files, folders, globs or - for stdin")
    p.add_argument("--out", required=True, metavar="DATA_DIR", help="data directory to create")
    p.add_argument(
        "--tokenizer",
        default="bpe",
        metavar="KIND|PATH",
        help="train a new tokenizer of this kind (char, bpe, wordpiece, unigram) or use an existing "
        "tokenizer.json (or a folder holding one: a checkpoint, or a run directory's latest checkpoint, e.g. "
        "to continue pretraining it with `pretrain --init-from`)",
    )
    p.add_argument(
        "--vocab-size",
        type=int,
        default=None,
        metavar="N",
        help="vocabulary size of a new tokenizer (default: 8192, or every "
        "character seen for char; unused with a tokenizer file)",
    )
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        metavar="F",
        help="share of the corpus held out for validation, strictly between 0 and 1",
    )
    p.add_argument(
        "--test-fraction",
        type=float,
        default=0.0,
        metavar="F",
        help="share of the corpus held out as a test split (DATA_DIR/test, scored by `evaluate --split test`), "
        "chosen like the validation split; at least 0, below 1 together with --val-fraction",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the document-level train/val/test split")
    p.add_argument(
        "--text-field",
        default="text",
        metavar="NAME",
        help="column holding the text in .jsonl/.csv/.parquet inputs",
    )
    p.add_argument(
        "--split",
        choices=["auto", "doc", "tail"],
        default="auto",
        help="doc: each document goes to val (or test) by a seeded hash of its text; tail: the last part of the "
        "corpus is val (then test), cut at a line break (nanoGPT style, good for a single long text); auto: "
        "doc, or tail with a notice when doc would leave a split empty (e.g. a single document)",
    )
    p.add_argument(
        "--doc-split",
        choices=["file", "paragraph", "line"],
        default="file",
        help="what a document is in text files and stdin: a whole file, a blank-line separated paragraph, or a line",
    )
    p.add_argument(
        "--add-eos",
        action="store_true",
        help="one end-of-sequence token after every line, the PTB/WikiText convention for word-level "
        "perplexity (shorthand for --doc-split line --no-dedup: repeated lines are kept)",
    )
    p.add_argument(
        "--val",
        action="append",
        metavar="INPUT",
        help="use this input as the validation split instead of holding out --val-fraction of the "
        "inputs (repeatable), e.g. a benchmark's own validation file",
    )
    p.add_argument(
        "--html",
        choices=["auto", "on", "off"],
        default="auto",
        help="HTML to text: auto parses .html/.htm files and text that looks like HTML",
    )
    p.add_argument(
        "--normalize",
        choices=["NFC", "NFKC", "NFD", "NFKD", "none"],
        default="NFC",
        help="Unicode normalisation form",
    )
    p.add_argument(
        "--no-clean-whitespace",
        dest="clean_whitespace",
        action="store_false",
        help="keep control characters, \\r, trailing spaces and blank-line runs as they are",
    )
    p.add_argument("--no-dedup", dest="dedup", action="store_false", help="keep exact duplicate documents")
    p.add_argument(
        "--near-dedup",
        type=float,
        default=None,
        metavar="JACCARD",
        help="also drop near-duplicate documents at this MinHash Jaccard similarity, e.g. 0.8",
    )
    p.add_argument(
        "--near-dedup-method",
        choices=("numpy", "datasketch"),
        default="numpy",
        help="how --near-dedup computes MinHash signatures: numpy (batched, no extra needed) or datasketch "
        "(the [dedup] extra, ~3x slower); the two hash differently, so verdicts right at the threshold can differ "
        "(default: numpy)",
    )
    p.add_argument(
        "--segment", action="store_true", help="segment Chinese text into space-separated words (jieba)"
    )
    p.add_argument(
        "--stopwords",
        default=None,
        metavar="en|zh|PATH",
        help="remove these stopwords (a built-in list or a file with one word per line); use --segment for Chinese. "
        "For bag-of-words pipelines only: a language model must predict them (a warning says so)",
    )
    p.add_argument(
        "--stem",
        default=None,
        metavar="LANG",
        help="replace every word by its Snowball stem (en, de, fr, ...; needs the classic extra). For bag-of-words "
        "pipelines only: a language model must predict whole words (a warning says so)",
    )
    p.add_argument(
        "--scrub-pii",
        action="store_true",
        help="replace e-mails, phone numbers, IPs, cards, IBANs, IDs, SSNs, URL credentials and secrets with "
        "placeholders (<EMAIL>, <PHONE>, ...; as `lmforge scrub` does), counted per type in the manifest",
    )
    p.add_argument(
        "--pii-ner",
        metavar="CKPT",
        help="with --scrub-pii: also replace the person, organisation and location names this lmforge NER "
        "checkpoint finds (<PERSON>, <ORG>, <LOCATION>)",
    )
    p.add_argument("--encoding", default="utf-8", help="encoding of text, JSON and CSV inputs")
    p.add_argument(
        "--tokenizer-train-bytes",
        type=int,
        default=200_000_000,
        metavar="N",
        help="train a new tokenizer on at most the first N bytes of cleaned text",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace DATA_DIR if it exists (only once the new one is complete)",
    )
    p.add_argument("--json", action="store_true", help="print the manifest as JSON instead of a summary")


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB" if n >= 100_000 else f"{n:,} bytes"


def summary(manifest: dict, out: str) -> str:
    tok = manifest["tokenizer"]
    how = "trained" if tok["trained"] else f"loaded from {tok['source']}"
    lines = [
        f"prepared {out}: {tok['kind']} tokenizer ({how}), {manifest['vocab_size']:,} tokens, {manifest['dtype']}"
    ]
    for name, info in manifest["splits"].items():
        lines.append(
            f"  {name:<5} {info['documents']:>10,} documents {info['tokens']:>14,} tokens {_mb(info['bytes']):>12}"
        )
    r = manifest["removed"]
    lines.append(
        f"  removed: {r['empty']:,} empty, {r['duplicates']:,} duplicates, {r['near_duplicates']:,} near duplicates"
    )
    if "pii" in manifest:
        found = ", ".join(f"{n:,} {kind}" for kind, n in manifest["pii"].items()) or "nothing found"
        lines.append(f"  PII replaced: {sum(manifest['pii'].values()):,} ({found})")
    return "\n".join(lines)


def run(args) -> int:
    from lmforge.cli.scrub import options_from
    from lmforge.data.prepare import prepare  # imports numpy/torch: only when the verb runs
    from lmforge.errors import ConfigError

    if args.pii_ner and not args.scrub_pii:
        raise ConfigError("--pii-ner finds names for --scrub-pii; give both")
    if args.add_eos:
        if args.doc_split not in ("file", "line"):
            raise ConfigError(
                "--add-eos makes every line a document; it cannot be combined with --doc-split paragraph"
            )
        args.doc_split, args.dedup = "line", False
    if args.stem:  # an unknown language is refused before the warning about using it
        from lmforge.data.stemming import snowball_language

        snowball_language(args.stem)
    for flag, value in (("--stopwords", args.stopwords), ("--stem", args.stem)):
        if value:  # kept for the classic pipelines, but a language model must predict those very words
            import sys

            print(
                f"warning: {flag} deletes what a language model must learn to predict; do not pretrain on "
                "this data (it is for bag-of-words pipelines)",
                file=sys.stderr,
            )

    manifest = prepare(
        args.inputs,
        args.out,
        tokenizer=args.tokenizer,
        vocab_size=args.vocab_size,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        seed=args.seed,
        text_field=args.text_field,
        split=args.split,
        doc_split=args.doc_split,
        html=args.html,
        normalize=None if args.normalize == "none" else args.normalize,
        clean_whitespace=args.clean_whitespace,
        dedup=args.dedup,
        near_dedup=args.near_dedup,
        near_dedup_method=args.near_dedup_method,
        segment=args.segment,
        stopwords=args.stopwords,
        stem=args.stem,
        encoding=args.encoding,
        tokenizer_train_bytes=args.tokenizer_train_bytes,
        overwrite=args.overwrite,
        progress=True,
        val_inputs=args.val,
        scrub_pii=options_from(None, args.pii_ner) if args.scrub_pii else False,
    )
    if args.json:
        print_json(manifest)
    else:
        print(summary(manifest, args.out))
    return 0
