"""Erasing Attention Consistency (``method=eac``; Zhang, Wang and Deng, ECCV 2022; docs/methods.md).

The network is the single-branch ResNet (``HeadNetwork``, every layer trained) with a linear
classifier on the pooled map, logits = fc(mean_hw F). Its class activation maps use the classifier's
weight W [C, C_F], detached, and no bias:

    M[n, k, h, w] = sum_c W[k, c] F[n, c, h, w]          (so mean_hw M_k = logit_k - b_k)

Each training step runs two separate forward passes (never one concatenated batch: each view gets
its own BatchNorm statistics, and the running statistics move twice, as in the original): view 1 is
the batch as the pipeline delivers it (augmented and randomly erased), view 2 its exact horizontal
mirror. With M2 mirrored back,

    L_flip = mean over n, k, h, w of (M1 - flip_w(M2))^2,    L = CE(logits_1, y) + lam * L_flip

(lam = 5). All C maps enter, not only the label's; there is no CE on view 2. L_flip reaches the body
through both views, never the classifier (its weight is detached in the maps). Evaluation and
prediction read view 1's logits, fc(mean_hw F).

As the original code (its clean-label mode): view 2 mirrors view 1 after erasing, so both views share
the erased rectangle, mirrored. Deviations, each for a reason:

- the original's noisy-label mode (any label file but the clean one) builds view 2 from the flipped
  raw image with its own erasing draw and no Gaussian noise; that needs the image before erasing,
  which the data pipelines do not hand to the method, so every run uses the clean mode's view 2;
- M2 is mirrored by index (``torch.flip``), not by the original's bilinear ``grid_sample`` on a
  negated grid; the two agree to float rounding (about 1e-6 on the reference batch);
- the pool is a mean over the map at any image size (the original's AvgPool2d(7) and 7 x 7 grid
  accept 224 px only; the same numbers there);
- ten-crop batches work crop by crop: each crop is an image whose mirror is its view 2.

Per-sample noise scores: ``consistency`` (an image's own L_flip term, mean over its C x h x w map
elements; an image whose attention does not survive the mirror is suspect, so high = suspect) and
the default small-loss ``aux_loss`` (CE of view 1's logits, high = suspect).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from adadf.config.schema import BackboneConfig, FusionConfig, refuse_switches
from adadf.methods.base import Batch, Forward, HeadOutputs, Method, Outputs
from adadf.models.single import HeadNetwork, ResNetBody, build_head_network


def class_activation_maps(feature_map: Tensor, weight: Tensor) -> Tensor:
    """feature_map [N, C_F, h, w], classifier weight [C, C_F] -> maps [N, C, h, w] (no bias)."""
    return torch.einsum("kc,nchw->nkhw", weight, feature_map)


def flip_consistency(maps1: Tensor, maps2: Tensor) -> Tensor:
    """Per-image consistency [N]: mean over C x h x w of (M1 - M2 mirrored along w)^2, in float32
    at least. Its mean over the N images is L_flip (equal-sized terms: the mean of all elements)."""
    dtype = torch.promote_types(maps1.dtype, torch.float32)
    diff = maps1.to(dtype) - torch.flip(maps2.to(dtype), dims=[3])
    return diff.pow(2).flatten(1).mean(1)


class CAMHead(nn.Module):
    """The classifier ``fc`` on the pooled map; in training also the class activation maps."""

    def __init__(self, channels: int, num_classes: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.drop = nn.Dropout(drop_rate)  # on the classifier's input; none in the original (0)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, feature_map: Tensor) -> HeadOutputs:
        """``logits`` fc(mean_hw F) [N, C]; ``extra['cams']`` [N, C, h, w] from the detached weight."""
        features = feature_map.mean((2, 3))  # [N, C_F]
        logits = self.fc(self.drop(features))
        cams = class_activation_maps(feature_map, self.fc.weight.detach())
        return HeadOutputs(logits=logits, features=features, feature_map=feature_map, extra={"cams": cams})

    def predict(self, feature_map: Tensor) -> Tensor:
        return self.fc(feature_map.mean((2, 3)))


class EACMethod(Method):
    """EAC on the single-branch ResNet network (``HeadNetwork``): every layer trained."""

    scaled_logits = False
    label_branch = 1
    trains_attention = False
    score_names = ("aux_loss", "consistency")

    def __init__(self, num_classes: int, pretrained: bool = False, lam: float = 5.0, drop_rate: float = 0.0,
                 params: FusionConfig | None = None) -> None:
        super().__init__(num_classes, pretrained)
        refuse_switches(params, "eac")  # also checked at validation, before any work
        self.lam = float(lam)
        self.drop_rate = float(drop_rate)

    def build_network(self, backbone: BackboneConfig, num_classes: int, image_size: int) -> HeadNetwork:
        def make_head(body: ResNetBody) -> CAMHead:
            return CAMHead(body.num_features, num_classes, self.drop_rate)

        return build_head_network(make_head, num_classes, backbone)

    def step(self, forward: Forward, batch: Batch, epoch: int) -> tuple[dict[str, Tensor | float], Outputs]:
        view1 = batch.images  # [N, 3, H, W], N = images x crops: each row its own image
        out1 = forward(view1)
        out2 = forward(torch.flip(view1, dims=[3]))  # a second pass: its own BatchNorm statistics
        logits = out1.logits.to(torch.promote_types(out1.logits.dtype, torch.float32))
        ce = F.cross_entropy(logits, batch.labels)
        per_image = flip_consistency(out1.extra["cams"], out2.extra["cams"])  # [N]
        consistency = per_image.mean()
        out1.extra["consistency"] = per_image.detach()
        return {"loss": ce + self.lam * consistency, "ce": ce, "consistency": consistency}, out1

    def sample_scores(self, outputs: Outputs, labels: Tensor) -> dict[str, Tensor]:
        """``aux_loss`` (CE of view 1's logits) and ``consistency`` (the image's L_flip): high = suspect."""
        scores = super().sample_scores(outputs, labels)
        if isinstance(outputs, HeadOutputs) and "consistency" in outputs.extra:
            scores["consistency"] = outputs.extra["consistency"].float()
        return scores
