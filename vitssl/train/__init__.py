"""The one pretraining loop: optimiser and schedule, checkpoints, distributed, logging."""
