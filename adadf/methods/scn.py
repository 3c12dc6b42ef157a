"""SCN, the Self-Cure Network (Wang et al., CVPR 2020), as its authors' code trains it (docs/methods.md).

The single-branch network (:class:`adadf.models.single.HeadNetwork`): the whole ResNet body, every
layer trained, then average pooling to f [N, F] and two heads on f: an importance weight
alpha = sigmoid(attention(f)) in (0, 1) and the logits z = alpha * fc(f), bias included. Evaluation
reads z (alpha > 0 leaves its argmax alone).

Each step: cross-entropy of z on the labels the method holds for the batch's samples, plus the rank
regularisation max(0, margin_1 - (mean alpha of the batch's floor(N * beta) highest - mean alpha of
the rest)), both at weight 1. From the 1-based epoch ``relabel_epoch`` on, every sample whose
softmax(z) puts more than ``margin_2`` above its label's probability on another class takes that
class as its label from the next epoch on. The original relabels every such sample of the batch,
whatever its importance (the default here); ``relabel_low_only`` keeps the change to the low-
importance group, as the paper describes. The labels live in a store indexed by dataset index,
checkpointed with the method, so a resumed run trains on the same labels.
"""
from __future__ import annotations

import logging
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from adadf.config.schema import BackboneConfig, FusionConfig, refuse_switches
from adadf.errors import UserError
from adadf.methods.base import Batch, Forward, HeadOutputs, Method, Outputs, Reducer
from adadf.models.single import HeadNetwork, ResNetBody, build_head_network


log = logging.getLogger(__name__)

ORIGINAL_RELABEL_EPOCH = 10  # method.relabel_epoch=null: the original code's (its --relabel_epoch default)


class SCNHead(nn.Module):
    """Pooled features -> importance alpha [N] and alpha-scaled logits [N, C]."""

    def __init__(self, num_features: int, num_classes: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(drop_rate)  # off in eval mode (the original's stays on: unused at 0)
        self.attention = nn.Linear(num_features, 1)
        self.fc = nn.Linear(num_features, num_classes)

    def forward(self, feature_map: Tensor) -> HeadOutputs:
        features = self.dropout(F.adaptive_avg_pool2d(feature_map, 1).flatten(1))  # [N, F]
        alpha = torch.sigmoid(self.attention(features))  # [N, 1]
        return HeadOutputs(logits=alpha * self.fc(features), attention=alpha.squeeze(1), features=features)

    def predict(self, feature_map: Tensor) -> Tensor:
        return self(feature_map).logits


def rank_regularization(alpha: Tensor, beta: float, margin: float) -> tuple[Tensor, Tensor, Tensor]:
    """max(0, margin - (mean of the floor(N * beta) largest alpha - mean of the others)) for alpha [N];
    also the rows of both groups. 0 (no gradient) when either group is empty (a batch of one)."""
    rows = alpha.numel()
    k_high = int(rows * beta)
    high = torch.topk(alpha, k_high).indices
    low = torch.topk(alpha, rows - k_high, largest=False).indices
    if k_high == 0 or k_high == rows:
        return alpha.sum() * 0.0, high, low
    gap = margin - (alpha[high].mean() - alpha[low].mean())
    return F.relu(gap), high, low  # relu: no gradient where inactive, as the original's branch


def relabel_targets(probs: Tensor, labels: Tensor, margin: float) -> tuple[Tensor, Tensor]:
    """Which samples to relabel, P_max - P_label > margin, and their argmax class, for probabilities
    [B, C] and labels [B]."""
    p_max, predicted = probs.max(1)
    p_label = probs.gather(1, labels.view(-1, 1)).squeeze(1)
    return p_max - p_label > margin, predicted


class SCNMethod(Method):
    """SCN on the single-branch ResNet network (``HeadNetwork``): every layer trained."""

    label_branch = 1
    low_is_suspect = frozenset({"attention", "importance"})
    score_names = ("aux_loss", "attention", "importance")

    def __init__(self, num_classes: int, pretrained: bool = False, beta: float = 0.7, margin_1: float = 0.07,
                 margin_2: float = 0.2, relabel_epoch: int | None = None, relabel_low_only: bool = False,
                 drop_rate: float = 0.0, params: FusionConfig | None = None) -> None:
        super().__init__(num_classes, pretrained)
        refuse_switches(params, "scn")  # also checked at validation, before any work
        self.beta = float(beta)
        self.margin_1 = float(margin_1)
        self.margin_2 = float(margin_2)
        self.relabel_epoch_given = relabel_epoch is not None
        self.relabel_epoch = int(relabel_epoch) if relabel_epoch is not None else ORIGINAL_RELABEL_EPOCH
        self.relabel_low_only = bool(relabel_low_only)
        self.drop_rate = float(drop_rate)
        self.labels = torch.zeros(0, dtype=torch.int64)  # [num_train] the labels trained on, by dataset index
        self.pending = torch.zeros(0, dtype=torch.int64)  # [num_train] this epoch's relabels (-1: none)

    def build_network(self, backbone: BackboneConfig, num_classes: int, image_size: int) -> HeadNetwork:
        def make_head(body: ResNetBody) -> SCNHead:
            return SCNHead(body.num_features, num_classes, self.drop_rate)

        return build_head_network(make_head, num_classes, backbone)

    def begin_training(self, train_labels: Sequence[int], epochs: int) -> None:
        if self.relabel_epoch > epochs and self.relabel_epoch_given:
            raise UserError(f"method.relabel_epoch={self.relabel_epoch} is beyond the run's trainer.epochs={epochs}: "
                            f"SCN would never relabel (set method.relabel_epoch <= {epochs})")
        if self.relabel_epoch > epochs:
            log.warning("method=scn: relabelling starts at epoch %d (the original's), after this %d-epoch run: no "
                        "relabelling (set method.relabel_epoch to have some)", self.relabel_epoch, epochs)
        self.labels = torch.as_tensor(list(train_labels), dtype=torch.int64)
        self.pending = torch.full_like(self.labels, -1)

    # -- the step ------------------------------------------------------------------------------
    def step(self, forward: Forward, batch: Batch, epoch: int) -> tuple[dict[str, Tensor | float], Outputs]:
        if batch.index is None:
            raise UserError("method=scn needs each batch's dataset indices (its label store); this loader gives none")
        if self.labels.device != batch.index.device:
            self.labels, self.pending = self.labels.to(batch.index.device), self.pending.to(batch.index.device)
        labels = self.labels[batch.index]  # [B] the labels as relabelled so far
        rows = labels.repeat_interleave(batch.num_crops)  # [N]: crops of an image are adjacent rows
        outputs = forward(batch.images)
        logits = outputs.logits.float()  # AMP: at least float32
        rr, _, low = rank_regularization(outputs.attention.float(), self.beta, self.margin_1)
        ce = F.cross_entropy(logits, rows)
        relabelled = (self.relabel(logits.detach(), labels, low, batch) if epoch >= self.relabel_epoch
                      else logits.new_zeros(()))
        return {"loss": ce + rr, "ce": ce, "rr": rr, "relabelled": relabelled}, outputs

    @torch.no_grad()
    def relabel(self, logits: Tensor, labels: Tensor, low: Tensor, batch: Batch) -> Tensor:
        """Record this batch's relabels (applied at the epoch's end); returns the fraction relabelled.
        With crops, an image's softmax is the mean of its crops', and it is in the low group when
        any of its crops is."""
        probs = torch.softmax(logits, dim=1).view(batch.num_images, batch.num_crops, -1).mean(1)  # [B, C]
        change, predicted = relabel_targets(probs, labels, self.margin_2)
        if self.relabel_low_only:
            in_low = torch.zeros(logits.shape[0], dtype=torch.bool, device=logits.device)
            in_low[low] = True
            change &= in_low.view(batch.num_images, batch.num_crops).any(1)
        self.pending[batch.index[change]] = predicted[change]
        return change.float().mean()

    def end_epoch(self, reduce: Reducer | None = None) -> None:
        """Write the epoch's relabels into the store. Under DDP each rank saw a shard: the relabels are
        summed as one-hot votes over ranks, so every rank holds the same store (a sample padded onto
        two ranks takes the lower class on a tie)."""
        if self.pending.numel() == 0 or (reduce is None and not bool((self.pending >= 0).any())):
            return  # nothing relabelled (every rank joins the sum under DDP, relabels or not)
        votes = F.one_hot(self.pending.clamp(min=0), self.num_classes).float() * (self.pending >= 0).unsqueeze(1)
        if reduce is not None:
            votes = reduce(votes)
        voted = votes.sum(1) > 0
        self.labels = torch.where(voted, votes.argmax(1), self.labels)
        self.pending.fill_(-1)

    def sample_scores(self, outputs: Outputs, labels: Tensor) -> dict[str, Tensor]:
        """``aux_loss`` (CE of z on the given label, high = suspect), and ``importance``, alpha (low =
        suspect; also under its general name ``attention``)."""
        scores = super().sample_scores(outputs, labels)
        if "attention" in scores:
            scores["importance"] = scores["attention"]
        return scores

    def state_dict(self) -> dict:
        return {"labels": self.labels.cpu().clone()}

    def load_state_dict(self, state: dict) -> None:
        labels = state["labels"]
        if labels.numel() != self.labels.numel():
            raise UserError(f"the checkpoint's SCN label store holds {labels.numel()} training samples; "
                            f"this dataset has {self.labels.numel()}")
        self.labels = labels.clone().to(self.labels.device)
        self.pending = torch.full_like(self.labels, -1)
