"""`lmforge vectors`: train static word vectors (word2vec, fastText), query them, and score them on analogy and
word-similarity files."""

from __future__ import annotations

from lmforge.cli.common import add_overwrite_option, add_verb, check_text, print_json

DESCRIPTION = """\
Static word vectors: train word2vec or fastText (gensim) on text, find nearest neighbours and analogies,
and score vectors on an analogy file (Google format) or a word-similarity file. Vectors files are word2vec
text or binary, or GloVe text (no header line); `finetune --model lstm|gru|cnn --vectors FILE` starts a
classifier's embedding layer from them.
"""

TRAIN_DESCRIPTION = """\
Train word2vec (skip-gram or CBOW) or fastText vectors with gensim on text files (.txt, .jsonl/.csv/.tsv
with --text-field, folders) or on the train text of a prepared data directory. Words are the lower-cased
words of each line (punctuation dropped; with --segment, Chinese cut into words by jieba). The output is
word2vec text format, or binary when FILE ends in .bin.
"""

TRAIN_EXAMPLES = """\
  lmforge vectors train wikitext-2/train.txt --out wt2.vec --dim 100 --epochs 10
  lmforge vectors train sst2/train.tsv wikitext-2/train.txt --text-field sentence --out sst.bin --cbow
  lmforge vectors train data/ --out vec.txt --kind fasttext --eval-analogy benchmarks/data/analogies.txt
"""

QUERY_DESCRIPTION = """\
Nearest neighbours of a word (--word) or the answer of an analogy (--analogy "king - man + woman",
3CosAdd), and scores on an analogy file (--eval-analogy, the Google format: ": section" lines, then
"a b c d" questions) or a word-similarity file (--eval-similarity: word1<TAB>word2<TAB>score).
"""

QUERY_EXAMPLES = """\
  lmforge vectors query wt2.vec --word king --top 10
  lmforge vectors query wt2.vec --analogy "paris - france + germany"
  lmforge vectors query glove.6B.100d.txt --eval-analogy benchmarks/data/analogies.txt --json
"""


def register(subparsers) -> None:
    parser = add_verb(
        subparsers,
        "vectors",
        help="train / query word vectors (word2vec, fastText, GloVe files)",
        description=DESCRIPTION,
        examples=TRAIN_EXAMPLES + QUERY_EXAMPLES,
        func=lambda args: parser.print_help() or 0,
    )
    actions = parser.add_subparsers(dest="vectors_action", metavar="ACTION")

    p = add_verb(
        actions, "train", "train word2vec or fastText vectors", TRAIN_DESCRIPTION, TRAIN_EXAMPLES, run_train
    )
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="DATA_OR_TEXT",
        help="text/JSONL/CSV/TSV files, folders, or a prepared data dir",
    )
    p.add_argument(
        "--out", required=True, metavar="FILE", help="the vectors file (.bin: binary word2vec format)"
    )
    p.add_argument("--kind", default="word2vec", choices=["word2vec", "fasttext"], help="the model")
    p.add_argument("--dim", type=int, default=300, help="vector size")
    algo = p.add_mutually_exclusive_group()
    algo.add_argument("--sg", dest="sg", action="store_true", default=True, help="skip-gram (the default)")
    algo.add_argument(
        "--cbow", dest="sg", action="store_false", help="continuous bag of words instead of skip-gram"
    )
    p.add_argument("--window", type=int, default=5, help="context words on each side")
    p.add_argument("--min-count", type=int, default=5, help="ignore words rarer than this")
    p.add_argument("--epochs", type=int, default=5, help="passes over the corpus")
    p.add_argument("--negative", type=int, default=5, help="negative samples per word")
    p.add_argument("--seed", type=int, default=0, help="random seed (runs with --workers 1 repeat exactly)")
    p.add_argument("--workers", type=int, default=1, help="training threads (more: faster, not reproducible)")
    p.add_argument("--text-field", default="text", help="the text field of .jsonl/.csv/.tsv inputs")
    p.add_argument("--segment", action="store_true", help="cut Chinese text into words with jieba")
    p.add_argument("--eval-analogy", metavar="FILE", help="also score the vectors on this analogy file")
    p.add_argument("--eval-similarity", metavar="FILE", help="also score them on this word-similarity file")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_overwrite_option(p, "an input")

    p = add_verb(
        actions,
        "query",
        "neighbours, analogies and scores of vectors",
        QUERY_DESCRIPTION,
        QUERY_EXAMPLES,
        run_query,
    )
    p.add_argument("vectors", metavar="VECTORS", help="word2vec text/binary or GloVe text file")
    p.add_argument("--word", help="show the nearest neighbours of this word")
    p.add_argument("--analogy", metavar="EXPR", help='words joined by + and -, e.g. "king - man + woman"')
    p.add_argument("--top", type=int, default=10, help="how many words to show")
    p.add_argument("--eval-analogy", metavar="FILE", help="accuracy on an analogy file (Google format)")
    p.add_argument(
        "--eval-similarity", metavar="FILE", help="correlation on a word1<TAB>word2<TAB>score file"
    )
    p.add_argument("--json", action="store_true", help="print the results as JSON")


def _scores(kv, args) -> dict:
    from lmforge.data.vectors import evaluate_analogies, evaluate_similarity

    out = {}
    if args.eval_analogy:
        out["analogy"] = evaluate_analogies(kv, args.eval_analogy)
    if args.eval_similarity:
        out["similarity"] = evaluate_similarity(kv, args.eval_similarity)
    return out


def _print_scores(scores: dict) -> None:
    if "analogy" in scores:
        a = scores["analogy"]
        acc = "n/a" if a["accuracy"] is None else f"{a['accuracy']:.1%}"
        print(
            f"analogy accuracy {acc} on {a['answered']} of {a['questions']} questions ({a['skipped']} skipped)"
        )
        for name, s in a["sections"].items():
            if s["total"]:
                print(f"  {name:<28} {s['correct']:>4} / {s['total']:<4} {s['accuracy']:.1%}")
    if "similarity" in scores:
        s = scores["similarity"]
        print(
            f"similarity: Spearman {s['spearman']:.3f}, Pearson {s['pearson']:.3f} "
            f"({s['oov_percent']:.1f}% of pairs skipped)"
        )


def run_train(args) -> int:
    from lmforge.data.vectors import VectorOptions, load_vectors, train_vectors

    options = VectorOptions(
        kind=args.kind,
        dim=args.dim,
        sg=args.sg,
        window=args.window,
        min_count=args.min_count,
        epochs=args.epochs,
        negative=args.negative,
        seed=args.seed,
        workers=args.workers,
        segment=args.segment,
        text_field=args.text_field,
    )
    summary = train_vectors(args.inputs, args.out, options, overwrite=args.overwrite)
    if args.eval_analogy or args.eval_similarity:
        summary.update(_scores(load_vectors(args.out), args))
    if args.json:
        print_json(summary)
        return 0
    print(
        f"wrote {summary['out']}: {summary['vocab']:,} words x {summary['dim']} ({summary['kind']} "
        f"{summary['algorithm']}) from {summary['words']:,} words in {summary['seconds']:.1f}s"
    )
    _print_scores(summary)
    return 0


def run_query(args) -> int:
    from lmforge.data.vectors import analogy, load_vectors, nearest
    from lmforge.errors import ConfigError

    check_text(args.word, "--word")
    check_text(args.analogy, "--analogy")
    if not (args.word or args.analogy or args.eval_analogy or args.eval_similarity):
        raise ConfigError("give --word, --analogy, --eval-analogy or --eval-similarity")
    if args.top < 1:
        raise ConfigError(f"--top must be at least 1, got {args.top}")
    kv = load_vectors(args.vectors)
    result: dict = {"vectors": args.vectors, "vocab": len(kv), "dim": kv.vector_size}
    if args.word:
        result["neighbours"] = [{"word": w, "similarity": s} for w, s in nearest(kv, args.word, args.top)]
    if args.analogy:
        result["answer"] = [{"word": w, "similarity": s} for w, s in analogy(kv, args.analogy, args.top)]
    result.update(_scores(kv, args))
    if args.json:
        print_json(result)
        return 0
    for key, title in (("neighbours", f"nearest to {args.word!r}"), ("answer", args.analogy)):
        if key in result:
            print(f"{title}:")
            for item in result[key]:
                print(f"  {item['word']:<20} {item['similarity']:.3f}")
    _print_scores(result)
    return 0


def add_classic_options(p) -> None:
    """finetune's classic-NLP flags: word vectors, stemming, and the tfidf model's options."""
    p.add_argument(
        "--vectors",
        metavar="FILE",
        help="lstm/gru/cnn: start the embedding layer from these word vectors (word2vec text/binary or GloVe; "
        "the model takes their size unless model.encoder sets n_embd); one line reports the coverage",
    )
    p.add_argument(
        "--freeze-vectors", action="store_true", help="keep the --vectors embeddings fixed (Kim's CNN-static)"
    )
    p.add_argument(
        "--stem",
        action="store_true",
        help="tfidf/lstm/gru/cnn: read words as their Snowball stems (of --lang), at training and prediction",
    )
    p.add_argument("--lang", default="en", help="the language of --stem (ISO code or Snowball name)")
    p.add_argument(
        "--classic-clf",
        default="lr",
        choices=["lr", "svm"],
        help="tfidf: logistic regression or a linear SVM over the TF-IDF word 1-2-grams",
    )
    p.add_argument("--char-ngrams", action="store_true", help="tfidf: also character 2-5-grams inside words")


def classic_from(args):
    from lmforge.tasks.classify.classic import ClassicOptions

    return ClassicOptions(
        vectors=args.vectors,
        freeze_vectors=args.freeze_vectors,
        stem=args.lang if args.stem else "",
        classifier=args.classic_clf,
        char_ngrams=args.char_ngrams,
    )
