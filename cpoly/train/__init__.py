"""Training: optimiser and schedule, checkpoints, evaluation, the Accelerate loop."""
