"""A fine-tuned classifier (classify, sentiment, NLI) as a function from texts to labels, in the manner of Hugging
Face's `pipeline("sentiment-analysis")`, and its scores and report on a labelled file.

    clf = TextClassificationPipeline("sst2-run")
    clf(["a gripping film", "a waste of time"])   # [{"label": "1", "score": 0.97}, {"label": "0", "score": 0.91}]
    nli = TextClassificationPipeline("nli-run")
    nli({"text": "A man plays a guitar.", "text_pair": "A person makes music."})
"""

from __future__ import annotations

import dataclasses
import os

from lmforge.checkpoint import load_for_inference
from lmforge.errors import ConfigError
from lmforge.eval.classification import write_report
from lmforge.outputs import check_output, staged
from lmforge.tasks.classify.encoding import text_encoder
from lmforge.tasks.classify.examples import Example, Fields, check_labels, read_examples
from lmforge.tasks.classify.run import predict_logits, probabilities, score_examples


class TextClassificationPipeline:
    def __init__(self, model: str | os.PathLike, device: str = "auto", batch_size: int = 64):
        self.lm = load_for_inference(model, device=device)
        if getattr(self.lm.model.config, "objective", None) != "classify":
            raise ConfigError(
                f"{model} is a {self.lm.config.get('arch')} checkpoint, not a fine-tuned classifier; "
                "fine-tune one with `lmforge finetune --task classify`"
            )
        cfg = self.lm.model.config
        self.labels, self.multi_label = list(cfg.labels), cfg.multi_label
        self.encoder = text_encoder(self.lm.tokenizer, cfg)
        self.batch_size = batch_size
        data = self.lm.config.get("data", {})
        self.task = data.get("task", "classify")
        self.fields = Fields(**data["fields"]) if "fields" in data else Fields()

    def probabilities(self, examples: list[Example]):
        rows = [self.encoder(ex.text, ex.pair) for ex in examples]
        logits = predict_logits(self.lm.model, self.encoder, rows, self.lm.device, self.batch_size)
        return probabilities(logits, self.multi_label)

    def __call__(self, inputs, top_k: int | None = 1, threshold: float = 0.5):
        """Predictions for one input or a list: a text, or a dict {"text", "text_pair"} for pairs.

        Single-label: {"label", "score"} (or, with top_k > 1 / None, a list of them, best first). Multi-label: the
        list of labels whose probability reaches `threshold`, each with its score.
        """
        single = not isinstance(inputs, list)
        examples = [self._example(x) for x in ([inputs] if single else inputs)]
        probs = self.probabilities(examples)
        out = []
        for row in probs.tolist():
            ranked = sorted(zip(self.labels, row), key=lambda p: -p[1])
            if self.multi_label:
                out.append([{"label": n, "score": s} for n, s in ranked if s >= threshold])
            elif top_k == 1:
                out.append({"label": ranked[0][0], "score": ranked[0][1]})
            else:
                out.append([{"label": n, "score": s} for n, s in ranked[: top_k or None]])
        return out[0] if single else out

    def _example(self, x) -> Example:
        if isinstance(x, str):
            if self.task == "nli":
                raise ConfigError("an NLI model classifies pairs: give {'text': ..., 'text_pair': ...}")
            text, pair = x, None
        elif isinstance(x, dict) and "text" in x:
            text, pair = x["text"], x.get("text_pair")
        else:
            raise ConfigError("give a text, or a dict with 'text' (and 'text_pair' for pairs)")
        if not isinstance(text, str) or not text.strip():
            raise ConfigError("cannot classify an empty text")
        return Example(text, pair)

    def predict_file(self, path: str | os.PathLike, fields: Fields | None = None) -> list[dict]:
        """Predictions for every example of a CSV/TSV/JSONL file (labels, if present, are not needed)."""
        examples = read_examples(path, fields or self.fields, need_labels=False)
        preds = self([{"text": e.text, "text_pair": e.pair} for e in examples])
        return [
            {"text": e.text, **({"text_pair": e.pair} if e.pair else {}), "prediction": p}
            for e, p in zip(examples, preds)
        ]


def evaluate_classifier(
    model: str | os.PathLike,
    data: str | os.PathLike,
    fields: Fields | dict | None = None,
    report: str | os.PathLike | None = None,
    device: str = "auto",
    samples: int = 20,
    overwrite: bool = False,
) -> dict:
    """Accuracy, precision/recall/F1 (per class, macro, weighted), confusion matrix and ROC-AUC of a fine-tuned
    classifier on a labelled file; with `report`, also metrics.json, report.md and the plots in that folder (which
    appears whole at the end, and replaces an existing one only with overwrite=True: lmforge.outputs).

    `fields` defaults to the field names the model was trained with; a dict changes only the fields it names."""
    if report is not None:
        check_output(report, overwrite=overwrite, inputs=[model, data], flag="--report")
    clf = TextClassificationPipeline(model, device=device)
    if isinstance(fields, dict):
        fields = dataclasses.replace(clf.fields, **{k: v for k, v in fields.items() if v is not None})
    examples = read_examples(data, fields or clf.fields)
    check_labels(examples, clf.labels, data)
    scores = score_examples(clf.lm.model, clf.encoder, examples, clf.lm.device)
    if report is not None:
        shown = examples[:samples]
        preds = clf([{"text": e.text, "text_pair": e.pair} for e in shown], top_k=1, threshold=0.5)
        rows = [
            {
                "text": e.text + (f" ||| {e.pair}" if e.pair else ""),
                "label": ",".join(e.labels),
                "predicted": p["label"] if isinstance(p, dict) else ",".join(q["label"] for q in p),
                "score": p["score"] if isinstance(p, dict) else min((q["score"] for q in p), default=0.0),
            }
            for e, p in zip(shown, preds)
        ]
        with staged(report) as tmp:
            write_report(scores, clf.labels, tmp, rows)
    return scores
