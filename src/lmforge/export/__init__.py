"""Checkpoints to and from other tools: Hugging Face transformers folders."""
