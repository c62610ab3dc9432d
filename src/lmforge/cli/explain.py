"""`lmforge explain`: why a model decided: attention maps, Integrated Gradients and Shapley values over words."""

from __future__ import annotations

from lmforge.cli.common import add_overwrite_option, add_verb, check_text, print_json

EXAMPLES = """\
  lmforge explain sst2-run --text "the acting was wooden but the score soars"          # IG to the predicted label
  lmforge explain sst2-run --text "the acting was wooden" --method all --out report/   # HTML, PNGs, JSON
  lmforge explain sst2-run --text "a dull film" --method shap --target pos --json
  lmforge explain nli-run --text "A man plays a guitar." --pair "A person makes music."
  lmforge explain conll-run --text "she met mr Smith in Rome" --target LOC --method shap
  lmforge explain squad-run --text "Who won?" --pair "The Broncos won the game." --target start
  lmforge explain run --text "The json module" --method attention --layer 3 --head all --out attn/
"""

DESCRIPTION = """\
Explain one prediction of a checkpoint.
  ig         Integrated Gradients on the token embeddings (Captum), summed over each word's sub-tokens, with
             the completeness error (delta) reported; a fine-tuned classifier/NLI model's probability of the
             predicted (or --target) label, a tagger's probability of an entity's tags, a QA model's of its
             answer span, or a GPT/RNN language model's probability of the next token
  shap       Shapley values over words (Captum's ShapleyValueSampling, words as whole features)
  attention  every layer's and head's attention weights (GPT, BERT-style, encoder-decoder, or a classifier
             on one of them), from the exact softmax path of the model's attention
  all        all of them the model supports
Without --out, the words and their attributions (or the attention summary) are printed; with --out, a folder
with explanation.html / explanation.json / METHOD.png and attention.html / attention.json / a PNG per layer
and head. A text longer than the model's context is refused, not cut."""


def register(subparsers) -> None:
    p = add_verb(
        subparsers,
        "explain",
        help="why a model decided: attention maps, Integrated Gradients, Shapley values",
        description=DESCRIPTION,
        examples=EXAMPLES,
        func=run,
    )
    p.add_argument("ckpt", metavar="RUN", help="checkpoint folder or run directory")
    p.add_argument("--text", required=True, help="the text to explain")
    p.add_argument(
        "--pair", help="the second text of an NLI pair, or a QA model's context (--text: the question)"
    )
    p.add_argument("--method", default="ig", help="ig, shap, attention or all")
    p.add_argument(
        "--target",
        help="what to explain: a label; an entity's type or text (NER); the next token (a language model); "
        "start or end (QA); default: the model's own prediction",
    )
    p.add_argument("--samples", type=int, default=64, help="shap: random orders of the words")
    p.add_argument("--layer", type=int, help="attention: only this layer (from 0)")
    p.add_argument("--head", default="all", help="attention: one head (from 0) or all")
    p.add_argument("--out", help="folder to write the HTML pages, PNGs and JSON to")
    add_overwrite_option(p, "RUN")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--json", action="store_true", help="print JSON")


def run(args) -> int:
    from lmforge.errors import ConfigError

    check_text(args.text, "--text")
    check_text(args.pair, "--pair")
    methods = {"ig": ["ig"], "shap": ["shap"], "attention": ["attention"], "all": ["attention", "ig", "shap"]}
    if args.method not in methods:
        raise ConfigError(f"unknown --method {args.method!r}; choose ig, shap, attention or all")
    head = None
    if args.head != "all":
        if not args.head.isdigit():
            raise ConfigError(f"--head must be a head number or all, got {args.head!r}")
        head = int(args.head)
    if args.out is not None:
        from lmforge.outputs import check_output

        check_output(args.out, overwrite=args.overwrite, inputs=[args.ckpt])

    from lmforge.explain import attentions, explain, write_report
    from lmforge.explain.common import as_lm

    lm = as_lm(args.ckpt, args.device)
    wanted = methods[args.method]
    explanations, maps = [], None
    for method in wanted:
        if method == "attention":
            try:
                maps = attentions(lm, args.text, args.pair).select(args.layer, head)
            except ConfigError as exc:
                if args.method != "all" or "has no attention" not in str(exc):
                    raise
        else:
            try:
                explanations.append(
                    explain(lm, args.text, method, args.target, args.pair, samples=args.samples)
                )
            except ConfigError as exc:
                if args.method != "all" or "need a fine-tuned" not in str(exc):
                    raise
    if not explanations and maps is None:
        raise ConfigError(f"{args.ckpt} supports none of ig, shap and attention")
    if args.out is not None:
        write_report(args.out, args.text, explanations, maps)
    result: dict = {e.method: e.to_json() for e in explanations}
    if maps is not None:
        result["attention"] = maps.to_json()
    if args.json:
        print_json(result[wanted[0]] if len(wanted) == 1 else result)
        return 0
    for e in explanations:
        answer = e.prediction.get("label", e.prediction.get("token"))
        delta = "" if e.delta is None else f", delta {e.delta:+.2e}"
        print(
            f"{e.method}: prediction {answer} ({e.prediction['score']:.3f}), explaining p({e.target}){delta}"
        )
        for word, value in e.ranked():
            print(f"  {value:+.4f}  {word}")
    if maps is not None:
        kinds = ", ".join(f"{k} ({len(v)} layers)" for k, v in maps.maps.items())
        print(
            f"attention: {kinds}, heads {maps.head_numbers}"
            + ("" if args.out else "; give --out for the maps")
        )
    if args.out is not None:
        print(f"wrote {args.out}")
    return 0
