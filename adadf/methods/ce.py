"""The cross-entropy baseline (``method=ce``): the usual FER baseline, same network, data, recipe,
optimizer and schedule as Ada-DF, so only the method differs.

Single-branch: only the target branch (the one every evaluation and prediction reads) is trained,
with a plain classifier head: ``scaled_logits = False`` makes the network return ``fc(f)`` instead
of Ada-DF's attention-scaled ``a * fc(f)``. Cross-entropy on attention-scaled logits would be
SCN's importance weighting (a learnt per-sample temperature that lets the network turn down
mislabelled images), not a plain baseline, and would flatter its robustness to label noise. The
auxiliary branch and the attention heads get no gradient (the optimizer skips them); the weights
keep Ada-DF's layout, so checkpoints load everywhere an Ada-DF checkpoint does.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from adadf.config.schema import BackboneConfig, FusionConfig, refuse_switches
from adadf.methods.base import Method, Outputs
from adadf.models.single import HeadNetwork, LinearHead, build_head_network


class CEMethod(Method):
    """Cross-entropy on the target branch's plain logits (label smoothing optional)."""

    scaled_logits = False
    label_branch = 1  # the target branch is the one trained on the labels
    trained_modules = ("target_branch.",)  # the auxiliary branch and the attention heads stay frozen
    trains_attention = False

    def __init__(self, num_classes: int, pretrained: bool = False, label_smoothing: float = 0.0,
                 params: FusionConfig | None = None) -> None:
        super().__init__(num_classes, pretrained)
        refuse_switches(params, "ce")  # also checked at validation, before any work
        self.label_smoothing = float(label_smoothing)

    def loss(self, outputs: Outputs, labels: Tensor, epoch: int, num_images: int) -> dict[str, Tensor | float]:
        logits = self.label_logits(outputs)  # the target branch's (or a head network's) logits
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # AMP: at least float32
        ce = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)  # mean over N rows
        return {"loss": ce, "ce": ce}


class FullNetworkCEMethod(CEMethod):
    """Cross-entropy on the single-branch network (``method=ce_full``): the whole ResNet body trained
    and a linear head, the network SCN, RUL and EAC are built on (docs/methods.md). The baseline to
    read them against: ``method=ce`` keeps the Ada-DF network's frozen trunk (conv1 ... layer1), which
    is Ada-DF's design with a pretrained backbone but random and fixed when training from scratch."""

    trained_modules = None  # every layer
    trains_attention = False
    score_names = ("aux_loss",)

    def __init__(self, num_classes: int, pretrained: bool = False, label_smoothing: float = 0.0,
                 drop_rate: float = 0.0, params: FusionConfig | None = None) -> None:
        super().__init__(num_classes, pretrained, label_smoothing, params)
        self.drop_rate = float(drop_rate)

    def build_network(self, backbone: BackboneConfig, num_classes: int, image_size: int) -> HeadNetwork:
        return build_head_network(lambda body: LinearHead(body.num_features, num_classes, self.drop_rate),
                                  num_classes, backbone)
