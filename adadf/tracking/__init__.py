"""Run tracking: the contract files every run writes, and optional W&B."""
from adadf.tracking.files import RunFiles
from adadf.tracking.loggers import Logger, NullLogger, WandbLogger

__all__ = ["Logger", "NullLogger", "RunFiles", "WandbLogger"]
