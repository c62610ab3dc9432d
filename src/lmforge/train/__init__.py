"""Training (an engine, docs/architecture.md): the one Trainer loop and its RunSpec (trainer.py), objectives,
optimizers and schedules, LoRA, sequence packing, masking for masked LMs, the label convention (labels.py) and the
progress display. Checkpoints are the core's (lmforge.checkpoint)."""
