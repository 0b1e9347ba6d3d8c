"""Training machinery: configuration, the trainer loop, checkpoints, EMA, schedules, DDP."""
