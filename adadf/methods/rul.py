"""Relative Uncertainty Learning (``method=rul``; Zhang, Wang and Deng, NeurIPS 2021; docs/methods.md).

On the body's feature map F [N, C_F, h, w] two heads of the same structure (``UncertaintyHead``)
give a feature mu [N, D] and a log-variance s [N, D] (D = ``feature_dim``, 64). Each training step pairs
row i with row pi(i) of a fresh random permutation and mixes their features by their relative
uncertainty u = mean_d exp(s):

    lam_i = u_i / (u_i + u_pi(i)),    m_i = lam_i mu_i + (1 - lam_i) mu_pi(i)
    loss  = 0.5 CE(fc(m), y) + 0.5 CE(fc(m), y_pi)        (the "add-up" loss: halves, not lam)

Nothing is detached: the log-variance head learns only through lam. Evaluation and prediction read
fc(mu); the log-variance head is unused there. As the original code:

- the whole body is trained, and the classifier ``fc`` at ``fc_lr_scale`` (10) x the optimizer's
  lr (2e-4 body and heads, 2e-3 fc in the original);
- the permutation is a plain ``randperm``: pairs may share a label, are not symmetric, and a fixed
  point gives lam = 0.5 and m_i = mu_i;
- the partner's weight is computed as u_pi / (u + u_pi), not as 1 - lam (the same up to rounding);
- dropout (``head_dropout``, 0.4) sits between each head's affine-free BatchNorm2d and its Linear.

Deviations, each for a reason:
- the permutation comes from a generator the method owns, seeded from ``seed`` and checkpointed,
  so resume is bit-exact (the original draws it from torch's global generator);
- the Linear's input is C_F * h * w for the run's image size and backbone (25,088 at 224 px on a
  ResNet-18, the only size the original accepts);
- the logits the engine's training accuracy, the prediction column and the small-loss score read are
  fc(mu) of each image itself; the trained logits fc(m) are ``extra['mixed_logits']`` (the
  original prints an accuracy of fc(m) against y only, which means little).

Per-sample noise scores: ``uncertainty`` (u; the paper's reading: a larger u is a more uncertain,
harder or mislabelled image, so high = suspect) and the default small-loss ``aux_loss`` (high =
suspect), both from the step's own forward pass.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from adadf.config.schema import BackboneConfig, FusionConfig, refuse_switches
from adadf.methods.base import Batch, Forward, HeadOutputs, Method, Outputs
from adadf.models.single import HeadNetwork, ResNetBody, build_head_network

BN_EPS = 2e-5  # both BatchNorms of a head, as the original


class UncertaintyHead(nn.Module):
    """Feature map [N, C_F, h, w] -> BatchNorm2d (no affine) -> dropout -> flatten -> Linear ->
    BatchNorm1d -> [N, feature_dim]. Two of them: mu and the log-variance."""

    def __init__(self, channels: int, side: int, feature_dim: int, dropout: float) -> None:
        super().__init__()
        self.map_norm = nn.BatchNorm2d(channels, eps=BN_EPS, affine=False)
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(channels * side * side, feature_dim)
        self.norm = nn.BatchNorm1d(feature_dim, eps=BN_EPS)

    def forward(self, feature_map: Tensor) -> Tensor:
        return self.norm(self.linear(self.dropout(self.map_norm(feature_map)).flatten(1)))


def relative_mix(mu: Tensor, log_var: Tensor, perm: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """mu, log_var [N, D], perm [N] -> u [N, 1], lam [N, 1], mixed features m [N, D] (float32)."""
    mu, log_var = mu.float(), log_var.float()
    u = log_var.exp().mean(dim=1, keepdim=True)  # [N, 1]
    u_pair = u[perm]
    lam = u / (u + u_pair)
    mixed = lam * mu + (u_pair / (u + u_pair)) * mu[perm]
    return u, lam, mixed


def add_up_loss(logits: Tensor, labels: Tensor, perm: Tensor) -> Tensor:
    """0.5 CE(logits, y) + 0.5 CE(logits, y[perm]), each a mean over the N rows."""
    logits = logits.float()
    return 0.5 * F.cross_entropy(logits, labels) + 0.5 * F.cross_entropy(logits, labels[perm])


class RULHead(nn.Module):
    """``mu`` and ``log_var`` heads on the body's map and the classifier ``fc`` (feature_dim -> C)."""

    def __init__(self, channels: int, side: int, num_classes: int, feature_dim: int = 64, head_dropout: float = 0.4,
                 drop_rate: float = 0.0) -> None:
        super().__init__()
        self.mu = UncertaintyHead(channels, side, feature_dim, head_dropout)
        self.log_var = UncertaintyHead(channels, side, feature_dim, head_dropout)
        self.drop = nn.Dropout(drop_rate)  # on the classifier's input; none in the original (0)
        self.fc = nn.Linear(feature_dim, num_classes)

    def forward(self, feature_map: Tensor, perm: Tensor | None = None) -> HeadOutputs:
        """With ``perm`` [N] (training): the mix; ``extra`` holds u [N], lam [N] and the trained
        logits fc(m) [N, C]. ``logits`` is fc(mu) [N, C] either way (no gradient when mixing)."""
        mu = self.mu(feature_map)
        if perm is None:
            return HeadOutputs(logits=self.fc(self.drop(mu)), features=mu)
        u, lam, mixed = relative_mix(mu, self.log_var(feature_map), perm)
        mixed_logits = self.fc(self.drop(mixed.to(mu.dtype)))
        with torch.no_grad():
            own = self.fc(mu)
        return HeadOutputs(logits=own, features=mu.detach(),
                           extra={"mixed_logits": mixed_logits, "uncertainty": u.squeeze(1), "lam": lam.squeeze(1)})

    def predict(self, feature_map: Tensor) -> Tensor:
        return self.fc(self.mu(feature_map))


class RULMethod(Method):
    """RUL on the single-branch ResNet network (``HeadNetwork``): every layer trained."""

    scaled_logits = False
    label_branch = 1
    trains_attention = False
    score_names = ("aux_loss", "uncertainty")

    def __init__(self, num_classes: int, pretrained: bool = False, feature_dim: int = 64, head_dropout: float = 0.4,
                 fc_lr_scale: float = 10.0, drop_rate: float = 0.0, seed: int = 0,
                 params: FusionConfig | None = None) -> None:
        super().__init__(num_classes, pretrained)
        refuse_switches(params, "rul")  # also checked at validation, before any work
        self.feature_dim = int(feature_dim)
        self.head_dropout = float(head_dropout)
        self.fc_lr_scale = float(fc_lr_scale)
        self.drop_rate = float(drop_rate)
        self.generator = torch.Generator().manual_seed(int(seed))  # the pairings, on the CPU

    def build_network(self, backbone: BackboneConfig, num_classes: int, image_size: int) -> HeadNetwork:
        def make_head(body: ResNetBody) -> RULHead:
            return RULHead(body.num_features, body.map_size(image_size), num_classes, self.feature_dim,
                           self.head_dropout, self.drop_rate)

        return build_head_network(make_head, num_classes, backbone)

    def param_groups(self, params: Sequence[tuple[str, nn.Parameter]]) -> list[dict[str, Any]]:
        """Body and both heads at the optimizer's lr, the classifier at ``fc_lr_scale`` x."""
        fc = [p for name, p in params if name.startswith("head.fc.")]
        rest = [p for name, p in params if not name.startswith("head.fc.")]
        return [{"params": rest, "lr_scale": 1.0}, {"params": fc, "lr_scale": self.fc_lr_scale}]

    def pairing(self, rows: int) -> Tensor:
        """This step's permutation [rows] (CPU), from the method's own generator."""
        return torch.randperm(rows, generator=self.generator)

    def step(self, forward: Forward, batch: Batch, epoch: int) -> tuple[dict[str, Tensor | float], Outputs]:
        perm = self.pairing(batch.images.shape[0]).to(batch.images.device)
        outputs = forward(batch.images, perm=perm)
        loss = add_up_loss(outputs.extra["mixed_logits"], batch.labels, perm)
        return {"loss": loss, "uncertainty": outputs.extra["uncertainty"].detach().mean()}, outputs

    def sample_scores(self, outputs: Outputs, labels: Tensor) -> dict[str, Tensor]:
        """``aux_loss`` (CE of fc(mu), high = suspect) and ``uncertainty`` (u, high = suspect)."""
        scores = super().sample_scores(outputs, labels)
        if "uncertainty" in outputs.extra:
            scores["uncertainty"] = outputs.extra["uncertainty"].detach().float()
        return scores

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
