"""Extractive question answering: SQuAD files and the official EM/F1 (squad.py), sliding windows and span search
(windows.py), fine-tuning (run.py), and question + context to an answer span (pipeline.py)."""
