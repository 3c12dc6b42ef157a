"""A method with its own network (a ResNet body and a linear head), a per-sample state read through
the batch's dataset indices and a classifier at 10x the learning rate: one module + one YAML
(``conf/method/head.yaml``), used by tests/test_method_interface.py."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from adadf.methods import Batch, HeadOutputs, Method
from adadf.models.single import build_head_network


class PooledLinear(nn.Module):
    def __init__(self, num_features: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(num_features, num_classes)

    def forward(self, feature_map: torch.Tensor) -> HeadOutputs:
        features = feature_map.mean((2, 3))
        return HeadOutputs(logits=self.fc(features), features=features)

    def predict(self, feature_map: torch.Tensor) -> torch.Tensor:
        return self.fc(feature_map.mean((2, 3)))


class CountingCE(Method):
    """Cross-entropy; counts how often each training sample was stepped on (checkpointed)."""

    def __init__(self, num_classes: int, pretrained: bool = False, fc_lr_scale: float = 10.0) -> None:
        super().__init__(num_classes, pretrained)
        self.fc_lr_scale = fc_lr_scale
        self.seen = torch.zeros(0, dtype=torch.int64)

    def build_network(self, backbone, num_classes, image_size):
        return build_head_network(lambda body: PooledLinear(body.num_features, num_classes), num_classes, backbone)

    def param_groups(self, params):
        return [{"params": [p for n, p in params if not n.startswith("head.fc.")]},
                {"params": [p for n, p in params if n.startswith("head.fc.")], "lr_scale": self.fc_lr_scale}]

    def begin_training(self, train_labels, epochs):
        self.seen = torch.zeros(len(train_labels), dtype=torch.int64)

    def step(self, forward, batch: Batch, epoch: int):
        self.seen.index_add_(0, batch.index.cpu(), torch.ones(batch.num_images, dtype=torch.int64))
        outputs = forward(batch.images)
        ce = F.cross_entropy(outputs.logits.float(), batch.labels)
        return {"loss": ce, "ce": ce}, outputs

    def state_dict(self) -> dict:
        return {"seen": self.seen.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.seen = state["seen"].clone()
