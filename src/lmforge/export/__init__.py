"""Checkpoints to and from other tools: Hugging Face transformers folders both ways (hf.py), and ONNX graphs with a
KV-cache decode graph checked against onnxruntime (onnx.py)."""
