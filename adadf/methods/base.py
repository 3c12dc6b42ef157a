"""What the engine needs from a training method: its network, its step and an update per epoch.

A method owns its network head (``build_network``; the default is the backbone group's Ada-DF
network), its training step (``step``: forward passes and loss; the engine does backward and the
optimizer), what it learns between epochs (and from which pass over the data), its per-sample state
for checkpoints and the terms it logs. The epoch loop only sums and logs the scalar terms the step
returns. Adding a method means one module (a subclass) and one YAML in ``adadf/conf/method/``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from adadf.config.schema import BackboneConfig, LDPass
from adadf.errors import UserError
from adadf.models.outputs import DualOutputs, HeadOutputs, Outputs, named

__all__ = ["Batch", "DualOutputs", "Forward", "HeadOutputs", "Method", "Outputs", "Reducer"]

# Sums per-class statistics across processes (DDP); identity in a single process.
Reducer = Callable[[Tensor], Tensor]
# The network's forward pass as the engine runs it (under autocast when the run uses AMP): images
# [N, 3, H, W] and any keyword arguments the method's network takes -> its outputs.
Forward = Callable[..., Outputs]


@dataclass
class Batch:
    """One training batch on the device, as a method's step sees it."""

    images: Tensor  # [N, 3, H, W] transformed; N = num_images * num_crops (an image's crops adjacent)
    labels: Tensor  # [N] the dataset's labels (noisy under dataset.label_noise), one per row
    index: Tensor | None  # [num_images] dataset indices (DataBundle.train_labels order); None: unknown
    num_images: int
    num_crops: int = 1


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
    # Per-sample scores (``sample_scores``) for which a LOW value marks a likely mislabelled sample.
    low_is_suspect: frozenset[str] = frozenset({"attention"})
    # The names ``sample_scores`` gives, so ``trainer.suspects_by`` is checked before any training
    # (None: not declared; checked at the first recorded batch). The Ada-DF network's by default.
    score_names: tuple[str, ...] | None = ("aux_loss", "attention")
    trains_attention: bool = True  # False: the attention heads stay as initialised (no histogram)

    def __init__(self, num_classes: int, pretrained: bool = False) -> None:
        self.num_classes = num_classes
        self.pretrained = pretrained

    # -- the network ---------------------------------------------------------------------
    def build_network(self, backbone: BackboneConfig, num_classes: int, image_size: int) -> nn.Module | None:
        """The network this method trains, its body's weights loaded from ``backbone.checkpoint``,
        or None for the backbone group's own (the Ada-DF dual-branch network and its loaders).
        Evaluation and prediction call it too (``checkpoint`` None) before the trained weights load."""
        return None

    def param_groups(self, params: Sequence[tuple[str, nn.Parameter]]) -> list[dict[str, Any]] | None:
        """Optimizer parameter groups of the trainable ``(name, parameter)`` pairs, or None for one
        group of all. A group's ``lr_scale`` multiplies the optimizer's ``lr`` (a classifier at 10x)."""
        return None

    def begin_training(self, train_labels: Sequence[int], epochs: int) -> None:
        """Once before the first epoch (before a resume restores ``state_dict``): the training labels
        by dataset index and the run's epochs, for per-sample state and for checks (one line each)."""

    # -- the step ------------------------------------------------------------------------
    def step(self, forward: Forward, batch: Batch, epoch: int) -> tuple[dict[str, Tensor | float], Outputs]:
        """One training step's forward pass(es) and loss; the engine then backpropagates ``loss``.
        Returns ``(terms as loss returns them, the outputs the reports see)``."""
        outputs = forward(batch.images)
        return self.loss(outputs, batch.labels, epoch, batch.num_images), outputs

    @classmethod
    def declared_scores(cls) -> tuple[str, ...] | None:
        """``score_names`` where it is declared with (or below) the ``sample_scores`` giving them; None
        for a subclass that overrides ``sample_scores`` but inherits the names (checked at its first batch)."""
        def owner(attr: str) -> type:
            return next(k for k in cls.__mro__ if attr in vars(k))
        return cls.score_names if issubclass(owner("score_names"), owner("sample_scores")) else None

    def label_logits(self, outputs: Outputs) -> Tensor:
        """The logits the method trains on the given labels (``label_branch`` of the dual network)."""
        outputs = named(outputs)
        return outputs[self.label_branch] if isinstance(outputs, DualOutputs) else outputs.logits

    def sample_scores(self, outputs: Outputs, labels: Tensor) -> dict[str, Tensor]:
        """Per-row scores [N] for the noise detector (train_attention.csv, ``noise_auroc_<score>``):
        ``aux_loss`` (the small-loss score: cross-entropy of the label-trained logits; high = suspect)
        and ``attention`` where the network has a per-sample weight. A method adds its own (SCN's
        importance, RUL's uncertainty, EAC's consistency); those in ``low_is_suspect`` mark a
        suspect by a low value, the others by a high one."""
        outputs = named(outputs)
        logits = self.label_logits(outputs).detach().float()
        scores = {"aux_loss": F.cross_entropy(logits, labels, reduction="none")}
        if outputs.attention is not None:
            scores["attention"] = outputs.attention.detach().float().reshape(-1)
        return scores

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
        """The default step's loss: ``{'loss': 0-d tensor to backpropagate, <term>: 0-d tensor | float, ...}``.

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
