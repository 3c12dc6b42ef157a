"""What the engine needs from a training method: a loss per batch and an update per epoch.

A method owns its loss, what it learns between epochs (and from which pass over the data), its state
for checkpoints and the terms it logs. The epoch loop only sums and logs the scalar terms ``loss``
returns. Adding a method means one module (a subclass) and one YAML in ``adadf/conf/method/``.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from adadf.config.schema import LDPass
from adadf.errors import UserError

# Sums per-class statistics across processes (DDP); identity in a single process.
Reducer = Callable[[Tensor], Tensor]
# The network's output for a batch: (auxiliary logits [N, C], target logits [N, C], attention [N]).
Outputs = tuple[Tensor, Tensor, Tensor]


class Method:
    """Base class: a plain method with no state and no pass between epochs."""

    # Which data ``observe`` sees each epoch: None (nothing), ``online`` (the training batches),
    # ``augmented`` (an eval-mode pass over the training loader) or ``clean`` (test transform).
    observes: LDPass | None = None
    # The network's logits: attention-scaled a * fc(f) (Ada-DF) or plain fc(f) (a plain head).
    scaled_logits: bool = True
    # Which of the outputs' logits (0 auxiliary, 1 target) the method trains on the given labels:
    # its per-sample loss is the small-loss noise score of train_attention.csv (``aux_loss``).
    label_branch: int = 0
    # Prefixes of the model's parameters the method trains (None: every trainable one). The rest is
    # frozen before the optimizer and DDP are built, so neither waits for gradients that never come.
    trained_modules: tuple[str, ...] | None = None
    trains_attention: bool = True  # False: the attention heads stay as initialised (no histogram)

    def __init__(self, num_classes: int, pretrained: bool = False) -> None:
        self.num_classes = num_classes
        self.pretrained = pretrained

    def freeze_untrained(self, model: nn.Module) -> None:
        """Freeze what ``trained_modules`` leaves out; refuse, in one line, a network that has none
        of the parts the method trains (a method that does not fit the backbone)."""
        if self.trained_modules is None:
            return
        trainable = [name for name, param in model.named_parameters() if param.requires_grad]
        if not any(name.startswith(self.trained_modules) for name in trainable):
            parts = ", ".join(sorted({name.split(".")[0] for name in trainable}))
            wanted = ", ".join(prefix.rstrip(".") for prefix in self.trained_modules)
            raise UserError(f"method ({type(self).__name__}) trains {wanted}, which the {type(model).__name__} "
                            f"network does not have as a trainable part (it has: {parts})")
        for name, param in model.named_parameters():
            param.requires_grad_(param.requires_grad and name.startswith(self.trained_modules))

    def loss(self, outputs: Outputs, labels: Tensor, epoch: int, num_images: int) -> dict[str, Tensor | float]:
        """``{'loss': 0-d tensor to backpropagate, <term>: 0-d tensor | float, ...}``.

        Tensor terms are averaged over the epoch's rows and logged as ``train_<term>``; float terms
        (weights of a schedule) are logged as they stand after the last batch.
        """
        raise NotImplementedError

    @torch.no_grad()
    def observe(self, outputs: Outputs, labels: Tensor) -> None:
        """One batch of the pass named by ``observes``."""

    def end_epoch(self, reduce: Reducer | None = None) -> None:
        """After the epoch's pass: update what the method learns between epochs."""

    def class_distributions(self) -> Tensor | None:
        """The C x C class-distribution matrix the method uses, if it has one (pictured per epoch)."""
        return None

    def config_updates(self) -> dict:
        """Values the method resolved at run time, merged into the recorded config (W&B, checkpoints)."""
        return {}

    def start_from(self, imported: dict) -> None:
        """State found in a loaded checkpoint (``backbone.checkpoint``), before training starts."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict()`` (resume)."""
