"""Text generation: sampling with a KV cache, stop strings and streaming."""
