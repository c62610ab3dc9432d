"""Dialogue: conversation files and the chat template (template.py), and chat fine-tuning with the loss on the
assistant turns (run.py). `lmforge chat` and the server's chat route use the template a checkpoint keeps."""
