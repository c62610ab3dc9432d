"""Text classification, sentiment and NLI: labelled CSV/TSV/JSONL files (examples.py), their encoding for a
bert/gpt/recurrent backbone (encoding.py), fine-tuning with LoRA and k-fold cross-validation (run.py), and the
pipeline and its report (pipeline.py)."""
