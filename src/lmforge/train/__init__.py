"""Training: the one trainer loop, optimizers and schedules, checkpoints."""
