"""Tokenizers: byte-level BPE, WordPiece, Unigram and character level, all as Hugging Face `tokenizers` objects.

Every kind is saved as a plain `tokenizer.json` that `tokenizers.Tokenizer.from_file` loads, so a tokenizer
trained here works anywhere the Hugging Face stack does (and a Hugging Face one works here).
"""

from lmforge.tokenizers.tokenizer import KINDS, SPECIAL_TOKENS, Tokenizer

__all__ = ["KINDS", "SPECIAL_TOKENS", "Tokenizer"]
