"""Ada-DF (``method=adadf``): the loss of docs/method.md and the class distributions LD
that the auxiliary branch re-estimates after every epoch (section 2)."""
from __future__ import annotations

import dataclasses
import logging

import torch
from torch import Tensor

from adadf import fusion
from adadf.config.schema import FusionConfig, fix_fusion
from adadf.errors import UserError
from adadf.methods.base import Method, Outputs, Reducer

log = logging.getLogger(__name__)


def resolve_detach_target(params: FusionConfig, pretrained: bool) -> FusionConfig:
    """``detach_target=None`` (auto) -> the reference's ``False`` when a pretrained checkpoint
    initialises the model, ``True`` when it trains from scratch: without a pretrained trunk the
    non-detached fused target pulls both branches towards uniform predictions, the attention
    collapses and nothing is learnt (docs/method.md, "Training from scratch")."""
    if params.detach_target is not None:
        return params
    return dataclasses.replace(params, detach_target=not pretrained)


class AdaDFMethod(Method):
    """Fusion hyper-parameters plus the C x C class-distribution matrix LD.

    LD is used unchanged for every batch of an epoch and recomputed after it from statistics of
    the auxiliary branch (``observe`` per batch, ``end_epoch`` once). It lives here, not in the
    model, so checkpoints can save and restore it exactly (``state_dict``).
    """

    def __init__(self, params: FusionConfig, num_classes: int, pretrained: bool = False,
                 fixed: dict | None = None) -> None:
        super().__init__(num_classes, pretrained)
        self.fixed = dict(fixed or {})
        params = fix_fusion(params, self.fixed)
        self.params = resolve_detach_target(params, pretrained)
        if params.detach_target is None:
            log.info("fusion.detach_target=auto -> %s: %s", self.params.detach_target,
                     "backbone.checkpoint given" if pretrained else "no backbone.checkpoint, training from scratch")
        # A static LD needs no statistics, so no pass.
        self.observes = self.params.ld_pass if self.params.update_class_dist else None
        self.class_dist = fusion.initial_class_distributions(num_classes, self.params.threshold)
        self._reset_statistics()

    def loss(self, outputs: Outputs, labels: Tensor, epoch: int, num_images: int) -> dict[str, Tensor | float]:
        aux_logits, target_logits, attention = outputs
        p = self.params
        if self.class_dist.device != aux_logits.device:
            self.class_dist = self.class_dist.to(aux_logits.device)
        return fusion.adadf_loss(
            aux_logits, target_logits, attention, labels, self.class_dist, epoch,
            beta=p.beta, min_weight=p.min_weight, max_weight=p.max_weight, tops=p.tops, margin=p.margin,
            label_smoothing=p.label_smoothing, num_images=num_images, detach_target=bool(p.detach_target),
            alpha=p.alpha,
        )

    def _reset_statistics(self) -> None:
        self._prob_sums: Tensor | None = None  # [C, C]
        self._counts: Tensor | None = None  # [C]

    @torch.no_grad()
    def observe(self, outputs: Outputs, labels: Tensor) -> None:
        """Add one batch of auxiliary logits [N, C] and labels [N] to this epoch's statistics."""
        sums, counts = fusion.class_distribution_sums(outputs[0].detach().float(), labels, self.num_classes)
        if self._prob_sums is None:
            self._prob_sums, self._counts = sums, counts
        else:
            self._prob_sums += sums
            self._counts += counts

    def end_epoch(self, reduce: Reducer | None = None) -> None:
        """Replace LD by the distributions of the accumulated statistics."""
        if not self.params.update_class_dist:
            return
        if self._prob_sums is None:
            device = self.class_dist.device
            self._prob_sums = torch.zeros(self.num_classes, self.num_classes, device=device)
            self._counts = torch.zeros(self.num_classes, dtype=torch.int64, device=device)
        sums, counts = self._prob_sums, self._counts
        if reduce is not None:
            sums, counts = reduce(sums), reduce(counts)
        self.class_dist = self._from_sums(sums, counts).to(self.class_dist.device, torch.float32)
        self._reset_statistics()

    def _from_sums(self, sums: Tensor, counts: Tensor) -> Tensor:
        p = self.params
        return fusion.class_distributions_from_sums(
            sums, counts, p.threshold, fallback_mass=p.fallback_mass, sharpen_T=p.T if p.sharpen else None)

    def class_distributions(self) -> Tensor:
        return self.class_dist

    def fallback_classes(self) -> Tensor | None:
        """[C] bool: the classes whose LD row is the fixed fallback row (no sample, or a mean
        confidence below the threshold, at the last update); None for a static LD."""
        if not self.params.update_class_dist:
            return None
        empty = torch.zeros(self.num_classes, dtype=torch.int64, device=self.class_dist.device)
        fixed = self._from_sums(torch.zeros_like(self.class_dist), empty)  # every row falls back
        return torch.isclose(self.class_dist, fixed, rtol=1e-6, atol=0.0).all(dim=1)

    def config_updates(self) -> dict:
        return {"fusion": {**self.fixed, "detach_target": self.params.detach_target}}

    def start_from(self, imported: dict) -> None:
        if imported.get("class_dist") is not None:
            self.load_state_dict({"class_dist": imported["class_dist"]})

    def state_dict(self) -> dict:
        return {"class_dist": self.class_dist.detach().cpu().clone()}

    def load_state_dict(self, state: dict) -> None:
        dist = state["class_dist"]
        if tuple(dist.shape) != (self.num_classes, self.num_classes):
            raise UserError(
                f"class distributions of shape {tuple(dist.shape)} do not fit {self.num_classes} classes"
            )
        self.class_dist = dist.to(self.class_dist.device, torch.float32)
