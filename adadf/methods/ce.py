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

from adadf.config.schema import FusionConfig, LDPass
from adadf.errors import UserError
from adadf.methods.base import Method, Outputs

# Ada-DF switches (fusion.*) that name a part this method does not have: a non-default value is an
# error, not silently ignored. Hyper-parameters that experiments set (threshold, beta, ...) are left alone.
ADADF_SWITCHES = {
    "ld_pass": (LDPass.augmented, "class distributions"),
    "update_class_dist": (True, "class distributions"),
    "sharpen": (False, "class distributions"),
    "alpha": (None, "KL/CE weight schedule"),
    "detach_target": (None, "fused target"),
}


def refuse_switches(params: FusionConfig | None, method: str) -> None:
    """One line naming the first Ada-DF switch set for a method that has no such part."""
    for key, (default, part) in ADADF_SWITCHES.items():
        value = getattr(params, key, default) if params is not None else default
        if value != default:
            shown = value.value if isinstance(value, LDPass) else value
            raise UserError(f"fusion.{key}={shown}: method={method} has no {part} (leave it at its default)")


class CEMethod(Method):
    """Cross-entropy on the target branch's plain logits (label smoothing optional)."""

    scaled_logits = False
    label_branch = 1  # the target branch is the one trained on the labels
    trained_modules = ("target_branch.",)  # the auxiliary branch and the attention heads stay frozen

    def __init__(self, num_classes: int, pretrained: bool = False, label_smoothing: float = 0.0,
                 params: FusionConfig | None = None) -> None:
        super().__init__(num_classes, pretrained)
        refuse_switches(params, "ce")
        self.label_smoothing = float(label_smoothing)

    def loss(self, outputs: Outputs, labels: Tensor, epoch: int, num_images: int) -> dict[str, Tensor | float]:
        logits = outputs[1]
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # AMP: at least float32
        ce = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)  # mean over N rows
        return {"loss": ce, "ce": ce}
