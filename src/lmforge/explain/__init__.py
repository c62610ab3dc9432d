"""Explanations of a model's decisions: attention maps and attributions (`lmforge explain`).

    from lmforge.explain import attentions, explain
    maps = attentions("run/best", "the acting was wooden")       # AttentionMaps: tensors per layer, (H, T, S)
    ig = explain("sst2-run/best", "the acting was wooden", method="ig")   # Explanation: words, attributions, delta

attention.py computes the maps from the exact softmax path of the attention layers (models/layers.py), checked
against the fast path; attribution.py runs Integrated Gradients (Captum's LayerIntegratedGradients on the token
embeddings) and Shapley values over words (Captum's ShapleyValueSampling with a mask grouping sub-tokens into
words) for classifiers, NLI and a language model's next token; render.py writes the HTML pages, PNGs and JSON.
"""

from lmforge.explain.attention import AttentionMaps, attentions
from lmforge.explain.attribution import METHODS, Explanation, explain
from lmforge.explain.render import write_report

__all__ = [
    "METHODS",
    "AttentionMaps",
    "Explanation",
    "attentions",
    "explain",
    "write_report",
]
