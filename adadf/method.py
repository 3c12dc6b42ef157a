"""Ada-DF's training-time state: the class distributions and how each epoch updates them."""
from __future__ import annotations

from typing import Callable

import torch

from adadf import fusion
from adadf.config.schema import FusionConfig

# Sums per-class statistics across processes (DDP); identity in a single process.
Reducer = Callable[[torch.Tensor], torch.Tensor]


class AdaDFMethod:
    """Fusion hyper-parameters plus the C x C class-distribution matrix LD.

    LD is used unchanged for every batch of an epoch and recomputed after it from statistics of
    the auxiliary branch (``accumulate`` per batch, ``update_distributions`` once). It lives here,
    not in the model, so checkpoints can save and restore it exactly (``state_dict``).
    """

    def __init__(self, params: FusionConfig, num_classes: int) -> None:
        self.params = params
        self.num_classes = num_classes
        self.class_dist = fusion.initial_class_distributions(num_classes, params.threshold)
        self.reset_statistics()

    def loss(
        self,
        aux_logits: torch.Tensor,
        target_logits: torch.Tensor,
        attention: torch.Tensor,
        labels: torch.Tensor,
        epoch: int,
        num_images: int,
    ) -> dict:
        p = self.params
        if self.class_dist.device != aux_logits.device:
            self.class_dist = self.class_dist.to(aux_logits.device)
        return fusion.adadf_loss(
            aux_logits,
            target_logits,
            attention,
            labels,
            self.class_dist,
            epoch,
            beta=p.beta,
            min_weight=p.min_weight,
            max_weight=p.max_weight,
            tops=p.tops,
            margin=p.margin,
            label_smoothing=p.label_smoothing,
            num_images=num_images,
            detach_target=bool(p.detach_target),
            alpha=p.alpha,
        )

    def reset_statistics(self) -> None:
        self._prob_sums: torch.Tensor | None = None  # [C, C]
        self._counts: torch.Tensor | None = None  # [C]

    @torch.no_grad()
    def accumulate(self, aux_logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Add one batch of auxiliary logits [N, C] and labels [N] to this epoch's statistics."""
        sums, counts = fusion.class_distribution_sums(aux_logits.detach(), labels, self.num_classes)
        if self._prob_sums is None:
            self._prob_sums, self._counts = sums, counts
        else:
            self._prob_sums += sums
            self._counts += counts

    def update_distributions(self, reduce: Reducer | None = None) -> torch.Tensor:
        """Replace LD by the distributions of the accumulated statistics; returns the new LD."""
        if self._prob_sums is None:
            device = self.class_dist.device
            self._prob_sums = torch.zeros(self.num_classes, self.num_classes, device=device)
            self._counts = torch.zeros(self.num_classes, dtype=torch.int64, device=device)
        sums, counts = self._prob_sums, self._counts
        if reduce is not None:
            sums, counts = reduce(sums), reduce(counts)
        p = self.params
        self.class_dist = fusion.class_distributions_from_sums(
            sums,
            counts,
            p.threshold,
            fallback_mass=p.fallback_mass,
            sharpen_T=p.T if p.sharpen else None,
        ).to(self.class_dist.device, torch.float32)
        self.reset_statistics()
        return self.class_dist

    def state_dict(self) -> dict:
        return {"class_dist": self.class_dist.detach().cpu().clone()}

    def load_state_dict(self, state: dict) -> None:
        dist = state["class_dist"]
        if tuple(dist.shape) != (self.num_classes, self.num_classes):
            from adadf.errors import UserError

            raise UserError(
                f"class distributions of shape {tuple(dist.shape)} do not fit {self.num_classes} classes"
            )
        self.class_dist = dist.to(self.class_dist.device, torch.float32)
