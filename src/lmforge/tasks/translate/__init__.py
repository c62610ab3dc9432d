"""Translation and summarization on (source, target) pairs: pairs files (pairs.py), the prompt format of a
decoder-only model (prompts.py), fine-tuning an encoder-decoder or a gpt (run.py), and decoding and scoring a
checkpoint on a pairs file (pipeline.py)."""
