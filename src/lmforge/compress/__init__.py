"""Smaller, faster models from trained ones: post-training quantization of the Linear layers."""

from lmforge.compress.quantize import METHODS, quantize_checkpoint, quantize_model

__all__ = ["METHODS", "quantize_checkpoint", "quantize_model"]
