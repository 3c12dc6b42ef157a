"""A method written outside the package, as a user would: one module (this) + one YAML
(``conf/method/tiny.yaml`` beside it), used by tests/test_methods.py."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from adadf.methods import Method


class TinyCrossEntropy(Method):
    """Cross-entropy on the target branch, an extra logged term, and a counter as checkpoint state."""

    def __init__(self, num_classes: int, pretrained: bool = False, weight: float = 1.0) -> None:
        super().__init__(num_classes, pretrained)
        self.weight = weight
        self.steps = torch.zeros((), dtype=torch.int64)

    def loss(self, outputs, labels, epoch, num_images):
        ce = F.cross_entropy(outputs[1].float(), labels)
        self.steps += 1
        return {"loss": self.weight * ce, "ce": ce, "attention_mean": outputs[2].float().mean()}

    def state_dict(self) -> dict:
        return {"steps": self.steps.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.steps = state["steps"].clone()


class HeadOnly(TinyCrossEntropy):
    """Trains a ``head`` module, which Ada-DF's network does not have: a method that does not fit."""

    trained_modules = ("head.",)
