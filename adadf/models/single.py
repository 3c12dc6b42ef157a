"""The single-branch network of the comparison methods (SCN, RUL, EAC; docs/methods.md): a whole
timm ResNet body, every layer trained as their original code does, and a head the method builds.

The body's parameter names are the ResNet's own (``body.conv1.weight``, ``body.layer1.0.bn1.*``), so
a pretrained ResNet file (``backbone.checkpoint``, e.g. the MS-Celeb-1M ResNet-18) loads into it
strictly, less its classifier; the head's are ``head.*``.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
from torch import nn

from adadf.config.schema import BackboneConfig
from adadf.models.adadf import create_resnet
from adadf.models.checkpoints import (_compare, _fill_bn_counters, _pick, _raise_mismatch, _strip_prefixes,
                                      is_adadf_checkpoint, load_state_file)
from adadf.models.outputs import HeadOutputs

log = logging.getLogger(__name__)

BODY_LAYERS = ("conv1", "bn1", "act1", "maxpool", "layer1", "layer2", "layer3", "layer4")


class ResNetBody(nn.Module):
    """conv1 ... layer4 of a timm ResNet: images [N, 3, H, W] -> feature map [N, F, H/32, W/32]."""

    def __init__(self, name: str = "resnet18") -> None:
        super().__init__()
        resnet = create_resnet(name)
        for layer in BODY_LAYERS:
            self.add_module(layer, getattr(resnet, layer))
        self.name = name
        self.num_features = int(resnet.num_features)  # F: 512 for resnet18/34, 2048 for resnet50

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in BODY_LAYERS:
            x = getattr(self, layer)(x)
        return x

    def map_size(self, image_size: int) -> int:
        """The feature map's side for square ``image_size`` inputs (7 at 224 px)."""
        with torch.no_grad():
            was = self.training
            self.eval()
            side = int(self(torch.zeros(1, 3, image_size, image_size)).shape[-1])
            self.train(was)
        return side


class Head(Protocol):
    """What a method's head provides: training outputs and the logits evaluation reads."""

    def __call__(self, feature_map: torch.Tensor, **kwargs: Any) -> HeadOutputs: ...

    def predict(self, feature_map: torch.Tensor) -> torch.Tensor: ...


class LinearHead(nn.Module):
    """The plain classifier: the map averaged to f [N, F], then ``fc`` (dropout on f at ``drop_rate``)."""

    def __init__(self, num_features: int, num_classes: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(num_features, num_classes)

    def forward(self, feature_map: torch.Tensor) -> HeadOutputs:
        features = feature_map.mean((2, 3))
        return HeadOutputs(logits=self.fc(self.drop(features)), features=features)

    def predict(self, feature_map: torch.Tensor) -> torch.Tensor:
        return self.fc(feature_map.mean((2, 3)))


class HeadNetwork(nn.Module):
    """``body`` then the method's ``head``. ``forward(x, **kwargs)`` -> the head's outputs (its keyword
    arguments, e.g. RUL's pairing, pass through); ``target_only`` -> the logits [N, C] evaluation and
    prediction read (``head.predict``)."""

    def __init__(self, body: ResNetBody, head: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.body = body
        self.head = head
        self.num_classes = int(num_classes)
        self.backbone = body.name
        self.imported_state: dict[str, torch.Tensor | None] = {}  # nothing besides weights to import

    def forward(self, x: torch.Tensor, target_only: bool = False, **kwargs: Any):
        feature_map = self.body(x)
        if target_only:
            return self.head.predict(feature_map)
        return self.head(feature_map, **kwargs)


def load_network_state(network: HeadNetwork, state: Mapping[str, object], path: Path) -> None:
    """A trained adadf checkpoint's ``model`` into ``network`` (body and head), strictly: one line
    naming the file and the keys that do not fit."""
    state = dict(_strip_prefixes(state))
    expected = network.state_dict()
    _raise_mismatch(path, f"a checkpoint of this method's network ({network.backbone} body + head)",
                    *_compare(expected, state))
    _fill_bn_counters(expected, state)
    network.load_state_dict(state, strict=True)


def load_body_weights(network: HeadNetwork, path: str | Path, allow_pickle: bool = False) -> None:
    """``backbone.checkpoint`` into ``network``: a pretrained ResNet file (``{'state_dict': ...}``, a
    bare or ``module.``-prefixed state dict) fills the body strictly, its classifier checked for width
    and dropped; an adadf checkpoint of the same method's network fills body and head (fine-tuning
    a trained run). Anything else is one line naming the file and the keys that do not fit."""
    path = Path(path).expanduser().resolve()
    obj = load_state_file(path, allow_pickle)
    if is_adadf_checkpoint(obj):
        load_network_state(network, obj["model"], path)
        log.info("Loaded adadf checkpoint %s into the body and the head", path)
        return
    state = dict(_strip_prefixes(_pick(obj, "state_dict", "model")))
    fc = {k: state.pop(k) for k in ("fc.weight", "fc.bias") if k in state}
    expected = network.body.state_dict()
    missing, unexpected, wrong = _compare(expected, state)
    width = fc["fc.weight"].shape[-1] if isinstance(fc.get("fc.weight"), torch.Tensor) else None
    if width is not None and width != network.body.num_features:
        wrong.append(f"fc.weight (K, {width}) vs (K, {network.body.num_features})")
    _raise_mismatch(path, f"a {network.backbone} state dict", missing, unexpected, wrong)
    filled = _fill_bn_counters(expected, state)
    network.body.load_state_dict(state, strict=True)
    log.info("Loaded pretrained %s from %s into the body: %d tensors%s", network.backbone, path,
             len(state) - filled, "; its classifier not used" if fc else "")


def build_head_network(make_head: Callable[[ResNetBody], nn.Module], num_classes: int,
                       backbone: BackboneConfig) -> HeadNetwork:
    """``backbone.name``'s body, the head ``make_head(body)`` builds on it, and the weights of
    ``backbone.checkpoint`` when one is named."""
    body = ResNetBody(backbone.name)
    network = HeadNetwork(body, make_head(body), num_classes)
    if backbone.checkpoint is not None and str(backbone.checkpoint).strip():
        load_body_weights(network, backbone.checkpoint, backbone.allow_pickle)
    return network
