"""Decoding (an engine): sampling with a KV cache, compiled decode steps and penalties (sampling.py), beam search
and batched prompt continuation (beam.py), encoder-decoder decoding (transduce.py), and token ids to streamed text
with stop strings (text.py)."""
