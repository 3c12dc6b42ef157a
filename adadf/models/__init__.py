"""The Ada-DF network and its weight loaders."""
from adadf.models.adadf import AdaDF
from adadf.models.checkpoints import (
    build_model,
    load_pretrained_backbone,
    load_reference_checkpoint,
    load_state_file,
)

__all__ = [
    "AdaDF",
    "build_model",
    "load_pretrained_backbone",
    "load_reference_checkpoint",
    "load_state_file",
]
