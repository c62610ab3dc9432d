"""Attributions: how much each word of a text moved the model's score for one output.

What is explained (`target`): a fine-tuned classifier's or NLI model's probability of a label (the predicted one
by default); a tagger's (NER) mean probability of an entity's tags over its words (the first entity found, or the
one whose text or type is the target); a language model's probability of the next token (the most likely one by
default); an extractive QA model's probability of its answer span (or of its start or end alone).

- Integrated Gradients (Sundararajan et al., 2017) on the token embeddings: Captum's LayerIntegratedGradients,
  from a baseline in which every text token is the padding token (the special tokens of the framing stay), per
  token and then summed over each word's sub-tokens. Its completeness error, `delta` = sum of attributions -
  (F(input) - F(baseline)), is reported with every explanation; the number of integration steps doubles (from 64,
  up to 512) until |delta| is below 1% of |F(input) - F(baseline)| (or 1e-3 when that difference is tiny).
- Shapley values over words: Captum's ShapleyValueSampling with a feature mask that groups each word's sub-tokens,
  so a word is present or replaced by padding as a whole; `samples` random orders of the words (the values are
  exact in expectation, and sum to F(input) - F(all words removed) exactly).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from lmforge.errors import ConfigError
from lmforge.explain.common import Framed, as_lm, frame
from lmforge.extras import require
from lmforge.lm import LM
from lmforge.models.classifier import BackboneWithHead
from lmforge.tasks.ner.pipeline import merge_entities

METHODS = ("ig", "shap", "attention", "all")
IG_STEPS, IG_MAX_STEPS = 64, 512
IG_RELATIVE_TOLERANCE, IG_ABSOLUTE_TOLERANCE = 0.01, 1e-3


@dataclass
class Explanation:
    """One attribution of one output: a number per word (`tokens`), what was explained and how well."""

    tokens: list[str]  # the words of the text (and of the pair, after it)
    attributions: list[float]
    prediction: dict  # the model's answer: {"label", "score"} or {"token", "score"}
    target: str  # the label or token whose probability is explained
    method: str  # ig | shap
    delta: float | None  # IG's completeness error (None for Shapley values)
    subtokens: list[str] = field(default_factory=list)  # the model's tokens (IG: attributions per token too)
    token_attributions: list[float] = field(default_factory=list)
    details: dict = field(default_factory=dict)  # the method's settings (steps, samples, baseline score)

    def to_json(self) -> dict:
        out = {
            "tokens": self.tokens,
            "attributions": self.attributions,
            "prediction": self.prediction,
            "target": self.target,
            "method": self.method,
            "delta": self.delta,
            **self.details,
        }
        if self.subtokens:
            out.update(subtokens=self.subtokens, token_attributions=self.token_attributions)
        return out

    def ranked(self) -> list[tuple[str, float]]:
        """(word, attribution), the most positive first."""
        return sorted(zip(self.tokens, self.attributions), key=lambda p: -p[1])


@dataclass
class Scorer:
    """The function explained: token ids (B, T) -> the target's probability (B,), and the model's answer."""

    fn: Callable[[torch.Tensor], torch.Tensor]
    embedding: torch.nn.Module
    prediction: dict
    target: str
    baseline_id: int


def explain(
    model: str | os.PathLike | LM,
    text: str,
    method: str = "ig",
    target: str | None = None,
    pair: str | None = None,
    samples: int = 64,
    seed: int = 0,
    device: str = "cpu",
) -> Explanation:
    """Attributions of `text`'s words (and `pair`'s, for NLI) to the model's probability of `target` (a label
    name for a classifier, a token for a language model; default: the model's own prediction), by Integrated
    Gradients ("ig") or Shapley values ("shap", `samples` orders of the words)."""
    if method not in ("ig", "shap"):
        raise ConfigError(f"unknown attribution method {method!r}; choose ig or shap")
    lm = as_lm(model, device)
    if pair is None and lm.config.get("data", {}).get("task") == "nli":
        raise ConfigError("an NLI model classifies pairs: give the hypothesis as the pair (--pair)")
    framed = frame(lm, text, pair)
    scorer = _scorer(lm, framed, target)
    ids = torch.tensor([framed.ids], device=lm.device)
    content = torch.tensor([w is not None for w in framed.word_of], device=lm.device)
    baseline = torch.where(content, torch.full_like(ids, scorer.baseline_id), ids)
    if method == "ig":
        return _integrated_gradients(framed, scorer, ids, baseline)
    return _shapley(framed, scorer, ids, baseline, samples, seed)


def _scorer(lm: LM, framed: Framed, target: str | None) -> Scorer:
    net, tok = lm.model, lm.tokenizer
    objective = getattr(net.config, "objective", None)
    baseline_id = tok.pad_id if tok.pad_id is not None else (tok.unk_id if tok.unk_id is not None else 0)
    types = torch.tensor([framed.types], device=lm.device)
    if objective == "classify" and isinstance(net, BackboneWithHead):
        labels, multi = list(net.config.labels), net.config.multi_label

        def probs(ids: torch.Tensor) -> torch.Tensor:
            logits = net(ids, torch.ones_like(ids), types.expand(ids.shape[0], -1)).float()
            return logits.sigmoid() if multi else logits.softmax(-1)

        with torch.no_grad():
            p = probs(torch.tensor([framed.ids], device=lm.device))[0]
        best = int(p.argmax())
        if target is None:
            index = best
        elif target in labels:
            index = labels.index(target)
        else:
            raise ConfigError(f"--target {target!r} is not a label of this model ({', '.join(labels)})")
        prediction = {"label": labels[best], "score": float(p[best])}
        return Scorer(
            lambda ids: probs(ids)[:, index], net.backbone.tok_emb, prediction, labels[index], baseline_id
        )
    if objective == "span":
        return _span_scorer(lm, framed, target, baseline_id)
    if objective == "tag" and isinstance(net, BackboneWithHead):
        return _entity_scorer(lm, framed, target, baseline_id)
    if (
        objective in (None, "tbptt")
        and hasattr(net, "tok_emb")
        and not getattr(net.config, "bidirectional", False)
    ):
        lm.check_generative()

        def next_token(ids: torch.Tensor) -> torch.Tensor:
            return net(ids)[:, -1].float().softmax(-1)

        with torch.no_grad():
            p = next_token(torch.tensor([framed.ids], device=lm.device))[0]
        best = int(p.argmax())
        if target is None:
            index = best
        else:
            pieces = tok.encode(target)
            if len(pieces) != 1:
                raise ConfigError(
                    f"--target {target!r} is {len(pieces)} tokens for this tokenizer; give one token"
                )
            index = pieces[0]
        shown = tok.decode([best], skip_special_tokens=False)
        prediction = {"token": shown, "score": float(p[best])}
        explained = tok.decode([index], skip_special_tokens=False)
        return Scorer(lambda ids: next_token(ids)[:, index], net.tok_emb, prediction, explained, baseline_id)
    arch = lm.config.get("arch", type(net).__name__)
    raise ConfigError(
        f"attributions (ig, shap) need a fine-tuned classifier, NLI model, tagger or QA model, or a GPT/RNN language model; "
        f"{lm.path or 'this checkpoint'} is a {arch} model (use --method attention for its attention maps)"
    )


def _entity_scorer(lm: LM, framed: Framed, target: str | None, baseline_id: int) -> Scorer:
    """A tagger: the mean probability of an entity's tags (B-LOC, I-LOC ...) at its words' first sub-tokens; the
    entity is the first the model finds whose text or type is `target` (default: the first entity)."""
    net, labels = lm.model, list(lm.model.config.labels)
    firsts = {}
    for position, w in enumerate(framed.word_of):
        if w is not None:
            firsts.setdefault(w, position)
    positions = torch.tensor([firsts[w] for w in range(len(framed.words))], device=lm.device)

    def tag_probs(ids: torch.Tensor) -> torch.Tensor:  # (B, words, tags)
        return net(ids, torch.ones_like(ids)).float().softmax(-1)[:, positions]

    with torch.no_grad():
        p = tag_probs(torch.tensor([framed.ids], device=lm.device))[0]
    best = p.argmax(-1).tolist()
    entities = merge_entities([labels[i] for i in best], p.max(-1).values.tolist())
    found = [
        (k, a, b, s)
        for k, a, b, s in entities
        if target is None or target in (k, " ".join(framed.words[a:b]))
    ]
    if not found:
        named = "; ".join(f"{' '.join(framed.words[a:b])} ({k})" for k, a, b, _ in entities) or "none"
        raise ConfigError(
            f"the model finds no entity {'' if target is None else repr(target) + ' '}in the text "
            f"(entities: {named}); give --target as an entity's text or type"
        )
    kind, a, b, score = found[0]
    words = torch.arange(a, b, device=lm.device)
    tags = torch.tensor(best[a:b], device=lm.device)
    entity = " ".join(framed.words[a:b])

    def entity_score(ids: torch.Tensor) -> torch.Tensor:
        return tag_probs(ids)[:, words, tags].mean(-1)

    prediction = {"label": kind, "entity": entity, "score": score}
    return Scorer(entity_score, net.backbone.tok_emb, prediction, f"{kind}: {entity}", baseline_id)


def _span_scorer(lm: LM, framed: Framed, target: str | None, baseline_id: int) -> Scorer:
    """An extractive QA model: the probability of its best answer span, p(start) * p(end) (the pipeline's score),
    or with target "start" / "end" the probability of that end of the span alone."""
    net = lm.model
    if target not in (None, "start", "end"):
        raise ConfigError(
            f"--target for a question-answering model is start or end (default: both), got {target!r}"
        )
    types = torch.tensor([framed.types], device=lm.device)

    def log_probs(ids: torch.Tensor) -> torch.Tensor:  # (B, T, 2): log p(start), log p(end) at each position
        return net(ids, torch.ones_like(ids), types.expand(ids.shape[0], -1)).float().log_softmax(1)

    with torch.no_grad():
        lp = log_probs(torch.tensor([framed.ids], device=lm.device))[0]
    context = [i for i, (t, w) in enumerate(zip(framed.types, framed.word_of)) if t == 1 and w is not None]
    longest = net.config.max_answer_tokens
    s, e = max(
        ((a, b) for a in context for b in context if a <= b < a + longest),
        key=lambda span: float(lp[span[0], 0] + lp[span[1], 1]),
    )
    answer = " ".join(framed.words[framed.word_of[s] : framed.word_of[e] + 1])
    score = float((lp[s, 0] + lp[e, 1]).exp())
    picks = {"start": [(s, 0)], "end": [(e, 1)], None: [(s, 0), (e, 1)]}[target]

    def span_probability(ids: torch.Tensor) -> torch.Tensor:
        out = log_probs(ids)
        return sum(out[:, position, column] for position, column in picks).exp()

    prediction = {"answer": answer, "score": score}
    explained = f"{target} of " if target else ""
    return Scorer(
        span_probability, net.backbone.tok_emb, prediction, f"{explained}answer: {answer}", baseline_id
    )


def _words(framed: Framed, per_token: list[float]) -> list[float]:
    sums = [0.0] * len(framed.words)
    for w, a in zip(framed.word_of, per_token):
        if w is not None:
            sums[w] += a
    return sums


def _integrated_gradients(
    framed: Framed, scorer: Scorer, ids: torch.Tensor, baseline: torch.Tensor
) -> Explanation:
    captum_attr = require("captum.attr", extra="explain", feature="Integrated Gradients")
    ig = captum_attr.LayerIntegratedGradients(scorer.fn, scorer.embedding)
    with torch.no_grad():
        gap = float(scorer.fn(ids)[0] - scorer.fn(baseline)[0])
    tolerance = max(IG_RELATIVE_TOLERANCE * abs(gap), IG_ABSOLUTE_TOLERANCE)
    steps = IG_STEPS
    while True:
        attributions, delta = ig.attribute(
            ids, baselines=baseline, n_steps=steps, return_convergence_delta=True, internal_batch_size=64
        )
        delta = float(delta[0])
        if abs(delta) <= tolerance or steps >= IG_MAX_STEPS:
            break
        steps *= 2
    per_token = attributions[0].sum(-1).detach().float().cpu().tolist()
    return Explanation(
        framed.words,
        _words(framed, per_token),
        scorer.prediction,
        scorer.target,
        "ig",
        delta,
        framed.tokens,
        per_token,
        {"steps": steps, "difference": gap},
    )


def _shapley(
    framed: Framed, scorer: Scorer, ids: torch.Tensor, baseline: torch.Tensor, samples: int, seed: int
) -> Explanation:
    captum_attr = require("captum.attr", extra="explain", feature="Shapley values")
    if samples < 1:
        raise ConfigError(f"samples must be >= 1, got {samples}")
    n = len(framed.words)
    # one feature per word; the special tokens (kept as they are in the baseline) form one last feature
    mask = torch.tensor([[n if w is None else w for w in framed.word_of]], device=ids.device)
    devices = [ids.device] if ids.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        with torch.no_grad():
            values = captum_attr.ShapleyValueSampling(scorer.fn).attribute(
                ids, baselines=baseline, feature_mask=mask, n_samples=samples, perturbations_per_eval=32
            )
    per_word = [0.0] * n
    for position, w in enumerate(framed.word_of):
        if w is not None:
            per_word[w] = float(values[0, position])  # every token of a word carries the word's value
    return Explanation(
        framed.words, per_word, scorer.prediction, scorer.target, "shap", None, details={"samples": samples}
    )
