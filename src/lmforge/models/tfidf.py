"""A fitted bag-of-words classifier as a torch module: TF-IDF weighting of n-gram counts, L2 normalisation, and a
linear model (logistic regression or a linear SVM fitted by scikit-learn, tasks/classify/tfidf.py).

It is saved and loaded like every lmforge checkpoint, with nothing pickled: the n-gram vocabulary is the
checkpoint's tokenizer.json (feature -> id), the idf weights, coefficients and intercepts are model.safetensors,
and the analyzer's settings are config.json. Loading rebuilds this module from them, so it cannot run code.

Its input is a batch of feature ids with their raw counts (tasks/classify/tfidf_features.py's encoder): the
logits are exactly scikit-learn's decision function; a binary model puts a 0 logit before its one score, so
that the softmax is logistic regression's probability.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from lmforge.errors import ConfigError

CLASSIFIERS = ("lr", "svm")


@dataclass
class TfidfConfig:
    labels: list = field(default_factory=list)
    vocab_size: int = 0  # features (word and character n-grams)
    classifier: str = (
        "lr"  # lr: logistic regression | svm: linear SVM (scores are margins, not probabilities)
    )
    word_ngrams: list = field(default_factory=lambda: [1, 2])  # smallest and largest word n-gram
    char_ngrams: list = field(default_factory=list)  # e.g. [2, 5]: character n-grams inside words; [] none
    sublinear_tf: bool = True  # 1 + log(count) instead of the count
    stem: str = ""  # Snowball language of the analyzer's stems, "" for none
    multi_label: bool = False
    backbone: str = "tfidf"  # what the classification pipeline reads it as
    block_size: int = 1 << 20  # no token limit: a bag of words reads any length
    C: float = 1.0  # the inverse regularisation strength it was fitted with (a record)

    objective = "classify"

    def validate(self) -> None:
        if self.classifier not in CLASSIFIERS:
            raise ConfigError(
                f"--classic-clf must be one of {', '.join(CLASSIFIERS)}, got {self.classifier!r}"
            )
        if len(self.labels) < 2:
            raise ConfigError(f"a classifier needs at least two labels, the data has {len(self.labels)}")
        if self.multi_label:
            raise ConfigError(
                "the tfidf classifier predicts one label per text; multi-label needs another model"
            )
        for name in ("word_ngrams", "char_ngrams"):
            value = getattr(self, name)
            if value and (len(value) != 2 or not 1 <= value[0] <= value[1]):
                raise ConfigError(f"model.{name} must be [smallest, largest] n-gram sizes, got {value}")
        if not self.word_ngrams and not self.char_ngrams:
            raise ConfigError("the tfidf classifier needs word or character n-grams")


class TfidfClassifier(nn.Module):
    def __init__(self, cfg: TfidfConfig):
        super().__init__()
        cfg.validate()
        self.config = cfg
        n = max(cfg.vocab_size, 1)
        self.idf = nn.Parameter(torch.ones(n), requires_grad=False)
        self.coef = nn.Parameter(torch.zeros(n, len(cfg.labels)), requires_grad=False)  # (features, labels)
        self.intercept = nn.Parameter(torch.zeros(len(cfg.labels)), requires_grad=False)

    def forward(self, input_ids, attention_mask=None, counts=None) -> torch.Tensor:
        """Label logits (B, labels) from feature ids (B, W), their mask and their counts in each text (B, W)."""
        if counts is None:
            counts = torch.ones(input_ids.shape, dtype=self.idf.dtype, device=input_ids.device)
        tf = counts.to(self.idf.dtype)
        if self.config.sublinear_tf:
            tf = torch.where(tf > 0, 1 + torch.log(tf.clamp(min=1e-12)), tf)
        weights = tf * self.idf[input_ids]
        if attention_mask is not None:
            weights = weights * attention_mask.to(weights.dtype)
        weights = weights / weights.norm(dim=1, keepdim=True).clamp(min=1e-12)
        return torch.einsum("bw,bwc->bc", weights, self.coef[input_ids]) + self.intercept

    def num_params(self) -> int:
        return self.coef.numel() + self.intercept.numel()

    def flops_per_token(self) -> dict[str, int]:
        per = 2 * len(self.config.labels) + 4
        return {"forward": per, "training": 0}
