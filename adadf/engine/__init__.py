"""The training engine: epoch loop, evaluation, checkpoints, interrupts."""
