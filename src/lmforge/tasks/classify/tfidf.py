"""`finetune --task classify --model tfidf`: TF-IDF word 1-2-grams (optionally character 2-5-grams) and logistic
regression or a linear SVM, fitted by scikit-learn in seconds, saved as an lmforge checkpoint that evaluate,
predict, serve and pipeline load like any other classifier.

The checkpoint pickles nothing (models/tfidf.py): the features are its tokenizer.json, the idf weights and the
linear model's coefficients and intercepts its model.safetensors, the analyzer's settings its config.json; loading
rebuilds the predictor from them, so a checkpoint from elsewhere cannot run code.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, pre_tokenizers

from lmforge import checkpoint as ckpt
from lmforge.errors import ConfigError
from lmforge.extras import require
from lmforge.models.tfidf import TfidfClassifier, TfidfConfig
from lmforge.tasks.classify.classic import ClassicOptions
from lmforge.tasks.classify.examples import Fields, check_labels, label_set, read_examples
from lmforge.tasks.classify.run import score_examples
from lmforge.tasks.classify.tfidf_features import TfidfEncoder, analyze_pair
from lmforge.tasks.common import augment_card, augment_info, augmented
from lmforge.tokenizers import Tokenizer
from lmforge.train.trainer import RunResult

CHAR_NGRAMS = [2, 5]


def feature_tokenizer(features: list[str]) -> Tokenizer:
    """The feature vocabulary as a word-level tokenizer.json (feature -> column of the linear model)."""
    hf = HFTokenizer(models.WordLevel(vocab={f: i for i, f in enumerate(features)}, unk_token=None))
    hf.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return Tokenizer(HFTokenizer.from_str(hf.to_str()))


def fit_linear(features: list[list[str]], y: np.ndarray, cfg: TfidfConfig, min_df: int):
    """(vectorizer, fitted classifier) of scikit-learn on analyzed texts."""
    text = require("sklearn.feature_extraction.text", extra="classic", feature="the tfidf classifier")
    linear = require("sklearn.linear_model", extra="classic", feature="the tfidf classifier")
    svm = require("sklearn.svm", extra="classic", feature="the tfidf classifier")
    vectorizer = text.TfidfVectorizer(
        analyzer=lambda feats: feats, sublinear_tf=cfg.sublinear_tf, min_df=min_df, dtype=np.float64
    )
    try:
        x = vectorizer.fit_transform(features)
    except ValueError:  # "empty vocabulary"
        raise ConfigError("the training texts have no word of two or more letters to count") from None
    if cfg.classifier == "svm":
        clf = svm.LinearSVC(C=cfg.C, random_state=0)
    else:
        clf = linear.LogisticRegression(C=cfg.C, max_iter=2000)
    clf.fit(x, y)
    return vectorizer, clf


def linear_model(vectorizer, clf, cfg: TfidfConfig) -> tuple[TfidfClassifier, Tokenizer]:
    """The fitted scikit-learn objects as a TfidfClassifier and its feature tokenizer."""
    features = sorted(vectorizer.vocabulary_, key=vectorizer.vocabulary_.get)
    coef, intercept = np.asarray(clf.coef_, dtype=np.float64), np.asarray(clf.intercept_, dtype=np.float64)
    if coef.shape[0] == 1:  # binary: one score for the second label; the first gets 0
        coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.concatenate([[0.0], intercept])
    cfg.vocab_size = len(features)
    model = TfidfClassifier(cfg)
    with torch.no_grad():
        model.idf.copy_(torch.from_numpy(vectorizer.idf_))
        model.coef.copy_(torch.from_numpy(coef.T))
        model.intercept.copy_(torch.from_numpy(intercept))
    return model, feature_tokenizer(features)


def fit_tfidf(
    task: str,
    train: str | os.PathLike,
    out: str | os.PathLike,
    dev: str | os.PathLike | None = None,
    fields: Fields | None = None,
    classic: ClassicOptions | None = None,
    max_examples: int | None = None,
    multi_label: bool = False,
    progress: bool = True,
    augment=None,
) -> RunResult:
    """Fit the TF-IDF + linear classifier on a labelled file and save it as run `out` (ckpt-1, latest, best);
    `augment` (AugmentOptions, finetune --augment) adds examples made from the training file."""
    fields, classic = fields or Fields(), classic or ClassicOptions()
    classic.validate("tfidf")
    if task == "nli" and fields.pair is None:
        raise ConfigError("NLI classifies text pairs: give --text-pair-field (e.g. the hypothesis column)")
    out = ckpt.require_new_run_dir(out)
    read = read_examples(train, fields, max_examples=max_examples)
    train_examples = augmented(read, augment)
    labels = label_set(train_examples)
    cfg = TfidfConfig(
        labels=labels,
        classifier=classic.classifier,
        char_ngrams=list(CHAR_NGRAMS) if classic.char_ngrams else [],
        stem=classic.stem,
        multi_label=multi_label or any(len(ex.labels) != 1 for ex in train_examples),
        C=classic.C,
    )
    cfg.validate()
    dev_examples = read_examples(dev, fields) if dev else None
    if dev_examples:
        check_labels(dev_examples, labels, dev)
    start = time.perf_counter()
    index = {name: i for i, name in enumerate(labels)}
    y = np.array([index[ex.labels[0]] for ex in train_examples])
    vectorizer, clf = fit_linear(
        [analyze_pair(ex.text, ex.pair, cfg) for ex in train_examples], y, cfg, classic.min_df
    )
    model, tokenizer = linear_model(vectorizer, clf, cfg)
    seconds = time.perf_counter() - start
    metrics = {}
    if dev_examples:
        scores = score_examples(model, TfidfEncoder(tokenizer, cfg), dev_examples, torch.device("cpu"))
        metrics = {f"val_{k}": v for k, v in scores.items() if isinstance(v, (int, float))}
    info = {"task": task, "train": str(train), "dev": str(dev) if dev else None, "lora": None}
    info.update(fields=dataclasses.asdict(fields), backbone="tfidf", examples=len(train_examples))
    info.update(augment_info(augment, len(read), len(train_examples)))
    folder = out / "ckpt-1"
    out.mkdir(parents=True, exist_ok=True)
    metrics_file = out / "metrics.jsonl"
    metrics_file.write_text(json.dumps({"step": 1, **metrics}) + "\n", encoding="utf-8")
    ckpt.save_checkpoint(
        folder,
        model,
        tokenizer,
        {"arch": "tfidf", "model": dataclasses.asdict(cfg), "data": info},
        metrics_file=metrics_file,
        card=model_card(out, cfg, info, metrics),
    )
    for pointer in ("latest", "best"):
        ckpt.point(out, pointer, folder)
    if progress:
        print(f"tfidf: {cfg.vocab_size:,} features, {cfg.classifier} fitted in {seconds:.1f}s")
    return RunResult(out, 1, 0, "fitted", folder, folder, metrics, seconds)


def model_card(out: Path, cfg: TfidfConfig, info: dict, metrics: dict) -> str:
    clf = "logistic regression" if cfg.classifier == "lr" else "linear SVM"
    grams = f"word {cfg.word_ngrams[0]}-{cfg.word_ngrams[1]}-grams"
    if cfg.char_ngrams:
        grams += f" and character {cfg.char_ngrams[0]}-{cfg.char_ngrams[1]}-grams"
    lines = [
        f"# {out.name}",
        "",
        f"A TF-IDF bag of {grams}{' (Snowball ' + cfg.stem + ' stems)' if cfg.stem else ''} with {clf} "
        f"(C={cfg.C}), fitted by scikit-learn: {cfg.vocab_size:,} features; labels {', '.join(cfg.labels)}.",
        "",
        f"- task: {info['task']}; training file: `{info['train']}` ({info['examples']:,} examples)",
        *augment_card(info),
    ]
    if metrics:
        lines.append(f"- dev `{info['dev']}`: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    lines += ["", f"Use: `lmforge predict {out} --input texts.txt`", ""]
    return "\n".join(lines)
