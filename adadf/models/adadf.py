"""The Ada-DF dual-branch network (spec section 1).

A timm ResNet is cut in two: a shared, frozen trunk (conv1, bn1, act1, maxpool, layer1) and a branch
(layer2, layer3, layer4, global pool, fc). The branch is instantiated twice (auxiliary and target,
identical at init, fc included), each with its own attention head. Pretrained weights are loaded
afterwards by :func:`adadf.models.load_pretrained_backbone`, which writes the same tensors into the
trunk and both branches: the result equals the reference's "load into resnet18, replace fc, deep
copy" sequence.
"""
from __future__ import annotations

import copy

import timm
import torch
from torch import nn

from adadf.errors import UserError
from adadf.models.outputs import DualOutputs

# Children a timm ResNet-family model must have for the trunk / branch split.
TRUNK_LAYERS = ("conv1", "bn1", "act1", "maxpool", "layer1")
BRANCH_LAYERS = ("layer2", "layer3", "layer4", "global_pool", "fc")


class Branch(nn.Module):
    """layer2 -> layer3 -> layer4 -> global pool (flattened) -> fc.

    Children keep the ResNet names and order, so ``branch.<i>`` of the reference maps to the i-th child.
    """

    def __init__(self, layer2: nn.Module, layer3: nn.Module, layer4: nn.Module,
                 global_pool: nn.Module, fc: nn.Linear) -> None:
        super().__init__()
        self.layer2 = layer2
        self.layer3 = layer3
        self.layer4 = layer4
        self.global_pool = global_pool
        self.fc = fc

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """[N, C_trunk, h, w] -> pooled feature f [N, F]."""
        x = self.layer4(self.layer3(self.layer2(x)))
        return self.global_pool(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Plain (unscaled) logits [N, num_classes]."""
        return self.fc(self.forward_features(x))


def create_resnet(backbone: str) -> nn.Module:
    """A randomly initialised timm ResNet-family model (never downloads weights).

    Raises UserError when ``backbone`` is not a timm model with the ResNet children we split on.
    """
    expected = f"backbone.name={backbone}: expected a timm ResNet-family model (resnet18, resnet34, resnet50, ...)"
    if not timm.is_model(backbone):
        raise UserError(expected)
    resnet = timm.create_model(backbone, pretrained=False)
    missing = [n for n in TRUNK_LAYERS + BRANCH_LAYERS if not hasattr(resnet, n)]
    if missing or not isinstance(resnet.fc, nn.Linear):
        raise UserError(expected)
    return resnet


class AdaDF(nn.Module):
    """Shared frozen trunk + auxiliary and target branches, each with an attention head.

    forward(x [N,3,H,W]) -> (z_1 [N,C], z_2 [N,C], a [N]) with
    f0 = dropout(trunk(x)), f_k = branch_k features [N,F], a_k = sigmoid(att_k(f_k)),
    z_k = a_k * fc_k(f_k), a = (a_1 + a_2) / 2.

    Construction order matches the reference (create resnet, new fc, deep copy, attention 1,
    attention 2), so a given seed draws the fresh fc and attention weights in the same sequence.
    """

    def __init__(self, num_classes: int, backbone: str = "resnet18", drop_rate: float = 0.0) -> None:
        super().__init__()
        if int(num_classes) < 2:
            raise UserError(f"num_classes={num_classes}: expected at least 2 classes")
        if not 0.0 <= float(drop_rate) < 1.0:
            raise UserError(f"drop_rate={drop_rate}: expected a value in [0, 1)")
        self.num_classes = int(num_classes)
        self.backbone = backbone

        resnet = create_resnet(backbone)
        self.num_features = int(resnet.num_features)  # F: 512 for resnet18/34, 2048 for resnet50
        # The new classifier replaces the pretrained 1000-class fc before the branch is copied.
        resnet.fc = nn.Linear(self.num_features, self.num_classes)

        self.trunk = nn.Sequential()
        for name in TRUNK_LAYERS:
            self.trunk.add_module(name, getattr(resnet, name))
        # Frozen trunk [quirk]: no gradients, but its BatchNorm layers follow train()/eval() and keep
        # updating running statistics in train mode, as the reference does.
        for param in self.trunk.parameters():
            param.requires_grad = False

        self.dropout = nn.Dropout(float(drop_rate))
        self.aux_branch = Branch(*(getattr(resnet, name) for name in BRANCH_LAYERS))
        self.target_branch = copy.deepcopy(self.aux_branch)
        self.aux_attention = nn.Linear(self.num_features, 1)
        self.target_attention = nn.Linear(self.num_features, 1)
        # Method state found in a loaded checkpoint (class distributions), not part of the weights.
        self.imported_state: dict[str, torch.Tensor | None] = {}
        # z_k = a_k * fc_k(f_k) (Ada-DF); False gives plain z_k = fc_k(f_k), the attention still
        # computed, for methods with a plain classifier head (method=ce). Not a weight: set by the
        # method (adadf.app.build) and by adadf.inference from the checkpoint's config.
        self.scale_logits = True

    @property
    def branches(self) -> tuple[Branch, Branch]:
        return self.aux_branch, self.target_branch

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Shared features f0 = dropout(trunk(x)): [N,3,H,W] -> [N, C_trunk, H/4, W/4]."""
        return self.dropout(self.trunk(x))

    def branch_head(self, branch: Branch, attention: nn.Linear, f0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One branch on the shared features: (logits z_k [N,C], attention a_k [N,1])."""
        f = branch.forward_features(f0)  # [N, F]
        a = torch.sigmoid(attention(f))  # [N, 1]
        z = branch.fc(f)  # [N, C]
        return (a * z if self.scale_logits else z), a  # attention-scaled logits, or a plain head's

    def forward_head(self, f0: torch.Tensor) -> DualOutputs:
        """Both branches on the shared features: (z_1 [N,C], z_2 [N,C], a [N]), also by name."""
        z1, a1 = self.branch_head(self.aux_branch, self.aux_attention, f0)
        z2, a2 = self.branch_head(self.target_branch, self.target_attention, f0)
        return DualOutputs(z1, z2, ((a1 + a2) / 2).squeeze(1))

    def forward(self, x: torch.Tensor, target_only: bool = False):
        """(z_1, z_2, a); with ``target_only`` just z_2 [N,C], the logits every evaluation and
        prediction reads: the auxiliary branch is not run (about 40% less work for resnet18)."""
        f0 = self.forward_features(x)
        if target_only:
            return self.branch_head(self.target_branch, self.target_attention, f0)[0]
        return self.forward_head(f0)
