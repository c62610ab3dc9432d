"""Smaller, faster models from trained ones: post-training quantization (quantize.py; the module format is
models/quantized.py), pruning with optional recovery training (prune.py), and knowledge distillation of language
models (distill.py) and classifiers (distill_classify.py), each with a size / speed / quality report."""

from lmforge.compress.quantize import METHODS, quantize_checkpoint, quantize_model

__all__ = ["METHODS", "quantize_checkpoint", "quantize_model"]
