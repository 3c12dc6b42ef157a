"""What evaluation and prediction share: reading a trained checkpoint, rebuilding its model, its
class names and its dataset's test-time preprocessing.

Two checkpoint formats are accepted:

- ``adadf``: ``checkpoints/last.pt`` / ``best.pt`` written by the trainer; it carries the resolved
  training config (``config``), so the dataset, backbone, class names and preprocessing it was
  trained with are known;
- ``ada-df``: the original implementation's ``checkpoint.pth.tar`` / ``model_best.pth.tar``
  (docs/runs.md); it has no config, so the dataset must be named (``dataset=raf`` ...).

A pretrained ResNet file (no classifier for our classes) is refused: it is not a trained model.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from hydra.utils import get_class
from torch import nn
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from adadf.config import instantiate_node
from adadf.config.schema import GROUP_SCHEMAS, BackboneConfig
from adadf.errors import UserError
from adadf.methods.base import Method
from adadf.models import AdaDF, load_state_file
from adadf.models.checkpoints import is_adadf_checkpoint, is_reference_state, load_weights
from adadf.models.single import load_network_state

# Keys of the ``dataset`` node in eval.yaml / predict.yaml that may override the checkpoint's dataset
# without naming a dataset group (``???`` there means "keep the checkpoint's value").
SHARED_DATASET_KEYS = ("root", "batch_size", "num_workers", "image_size")


@dataclass
class TrainedCheckpoint:
    """A checkpoint file, read once: its format and what it says about how it was trained."""

    path: Path
    format: str  # "adadf" | "ada-df"
    epoch: int | None
    num_classes: int | None  # rows of the target branch's fc
    class_names: list[str] | None  # adadf checkpoints only
    config: dict[str, Any] | None  # the resolved training config (adadf checkpoints only)
    contents: dict = field(repr=False, default_factory=dict)  # what torch.load returned

    @property
    def dataset_config(self) -> dict[str, Any] | None:
        dataset = (self.config or {}).get("dataset")
        return dict(dataset) if isinstance(dataset, Mapping) else None

    @property
    def backbone(self) -> str | None:
        backbone = (self.config or {}).get("backbone")
        return backbone.get("name") if isinstance(backbone, Mapping) else None


def _fc_rows(state: Mapping, *keys: str) -> int | None:
    for key in keys:
        for prefix in ("", "module.", "_orig_mod."):
            value = state.get(prefix + key)
            if isinstance(value, torch.Tensor) and value.dim() == 2:
                return int(value.shape[0])
    return None


def read_checkpoint(path: str | Path, allow_pickle: bool = False) -> TrainedCheckpoint:
    """Read ``path`` (``weights_only``) and tell its format; a missing, truncated or foreign file is a
    one-line UserError. ``allow_pickle`` (the commands' ``allow_pickle=true``): a file that needs full
    unpickling is loaded instead of refused, running any code it holds."""
    path = Path(path).expanduser().resolve()
    obj = load_state_file(path, allow_pickle, opt_in="allow_pickle=true")
    if is_adadf_checkpoint(obj):
        config = obj.get("config") if isinstance(obj.get("config"), Mapping) else None
        names = obj.get("class_names")
        return TrainedCheckpoint(
            path=path, format="adadf", epoch=obj.get("epoch"),
            num_classes=_fc_rows(obj["model"], "target_branch.fc.weight", "head.fc.weight"),
            class_names=[str(n) for n in names] if isinstance(names, (list, tuple)) else None,
            config=dict(config) if config is not None else None, contents=obj,
        )
    state = obj.get("state_dict") if isinstance(obj.get("state_dict"), Mapping) else obj
    if is_reference_state(state):
        return TrainedCheckpoint(
            path=path, format="ada-df", epoch=obj.get("epoch") if state is not obj else None,
            num_classes=_fc_rows(state, "branch_2.4.weight", "branch_2_classifier.weight"),
            class_names=None, config=None, contents=obj,
        )
    raise UserError(f"{path}: not a trained Ada-DF model; expected an adadf checkpoint "
                    f"(checkpoints/last.pt or best.pt) or an original Ada-DF checkpoint.pth.tar")


def load_model(checkpoint: TrainedCheckpoint, num_classes: int, backbone: str | None = None,
               device: torch.device | str = "cpu") -> nn.Module:
    """The checkpoint's network in eval mode on ``device``, as the method it was trained with builds
    it (``Method.build_network``; the Ada-DF network for Ada-DF, its ablations, CE and original files).

    ``backbone`` defaults to the one it was trained with (resnet18 for original Ada-DF files). A
    class-count or architecture mismatch is a one-line UserError naming the file.
    """
    name = backbone or checkpoint.backbone or "resnet18"
    method = checkpoint_method(checkpoint, num_classes)
    image_size = int((checkpoint.dataset_config or {}).get("image_size") or 224)
    network = method.build_network(BackboneConfig(name=name), num_classes, image_size) if method else None
    if network is not None:
        load_network_state(network, checkpoint.contents["model"], checkpoint.path)
        return network.to(device).eval()
    model = AdaDF(num_classes, backbone=name)
    load_weights(model, checkpoint.contents, checkpoint.path)  # the file is not read a second time
    model.scale_logits = scaled_logits(checkpoint)
    return model.to(device).eval()


def _method_class(checkpoint: TrainedCheckpoint) -> type[Method] | None:
    """The class of the method the checkpoint was trained with (None: not recorded, i.e. Ada-DF)."""
    method = (checkpoint.config or {}).get("method")
    target = method.get("_target_") if isinstance(method, Mapping) else None
    if not target:
        return None
    try:
        return get_class(str(target))
    except (ImportError, ValueError):
        raise UserError(f"{checkpoint.path}: trained with method {target}, which cannot be imported here") from None


def checkpoint_method(checkpoint: TrainedCheckpoint, num_classes: int) -> Method | None:
    """The checkpoint's method, rebuilt from its recorded config, when it builds its own network
    (``Method.build_network`` overridden); None for the Ada-DF network's methods."""
    cls = _method_class(checkpoint)
    if cls is None or getattr(cls, "build_network", None) is Method.build_network:
        return None
    recorded = dict(checkpoint.config["method"])
    schema = next((s for s in GROUP_SCHEMAS["method"].values() if s._target_ == recorded["_target_"]), None)
    node = OmegaConf.create(recorded) if schema is None else OmegaConf.merge(
        OmegaConf.structured(schema), {k: v for k, v in recorded.items() if k in schema.__dataclass_fields__})
    return instantiate_node(node, "method", num_classes=num_classes, pretrained=False)


def scaled_logits(checkpoint: TrainedCheckpoint) -> bool:
    """Whether the method the checkpoint was trained with scales logits by the attention (Ada-DF
    and original checkpoints: yes; ``method=ce``: no, a plain head), read from its method class."""
    cls = _method_class(checkpoint)
    return True if cls is None else bool(getattr(cls, "scaled_logits", True))


def dataset_config(checkpoint: TrainedCheckpoint, node: DictConfig | None, command: str) -> dict[str, Any]:
    """The dataset to use, as a plain dict with a ``_target_``.

    ``node`` is the command's ``dataset`` node: a full dataset group (the user named one, e.g.
    ``dataset=raf``) is used as is; otherwise the checkpoint's training dataset is taken and the
    shared keys the user set (``dataset.root=...``; unset ones are ``???``) override it.
    """
    given: dict[str, Any] = {}
    if node is not None:
        given = {k: v for k, v in OmegaConf.to_container(node, resolve=True, throw_on_missing=False).items()
                 if not OmegaConf.is_missing(node, k)}
    if "_target_" in given:
        return given
    base = checkpoint.dataset_config
    if base is None:
        raise UserError(
            f"{checkpoint.path}: an original Ada-DF checkpoint does not say which dataset it was trained "
            f"on; name one, e.g. `{command} checkpoint=... dataset=raf dataset.root=PATH`"
        )
    return {**base, **given}


def class_names(checkpoint: TrainedCheckpoint, dataset: Mapping[str, Any], num_classes: int) -> list[str]:
    """Class names, first found of: the checkpoint, the dataset config's ``class_names``, the
    ``CLASS_NAMES`` of the dataset's module (its first ``num_classes``), else ``class_0`` ..."""
    candidates: list[Any] = [checkpoint.class_names, dataset.get("class_names")]
    module_name = str(dataset.get("_target_", "")).rpartition(".")[0]
    if module_name:
        try:
            names = getattr(importlib.import_module(module_name), "CLASS_NAMES", None)
        except ImportError:
            names = None
        candidates.append(list(names)[:num_classes] if names is not None else None)
    for names in candidates:
        if names is not None and len(names) == num_classes:
            return [str(n) for n in names]
    return [f"class_{i}" for i in range(num_classes)]


def image_transform(dataset: Mapping[str, Any]) -> Callable[[Image.Image], torch.Tensor]:
    """The dataset's test-time transform for one RGB image: [3, S, S], or [K, 3, S, S] with crops.

    Real datasets name a ``recipe`` (docs/datasets.md, docs/recipes.md: standard = resize to SxS -> tensor ->
    normalise; tencrop = resize the shorter side -> TenCrop -> normalise). A dataset without one
    (the synthetic set: uint8 images of side S, normalised) gets the standard recipe, which is the
    same computation at size S and resizes images of any other size.
    """
    from adadf.data.transforms import eval_transform, make_recipe

    size = dataset.get("image_size")
    if size is None:
        raise UserError("dataset.image_size is not set: expected the input side in pixels")
    return eval_transform(make_recipe(str(dataset.get("recipe", "standard")), int(size)))


@torch.no_grad()
def predict_logits(model: AdaDF, images: torch.Tensor, tta: bool = False) -> torch.Tensor:
    """Target-branch logits averaged over crops (and over horizontal flips with ``tta``).

    images: [B, 3, H, W] or [B, K, 3, H, W] (K crops per image) -> logits [B, C].
    """
    if images.dim() == 4:
        images = images.unsqueeze(1)
    b, k = images.shape[:2]
    x = images.flatten(0, 1)  # [B*K, 3, H, W]
    if tta:
        x = torch.cat([x, x.flip(-1)])  # [2*B*K, ...]: every crop and its mirror image
    target_logits = model(x, target_only=True)
    views = 2 * k if tta else k
    logits = target_logits.float()
    if tta:  # [2, B, K, C] -> [B, 2K, C]
        logits = logits.view(2, b, k, -1).transpose(0, 1).reshape(b, views, -1)
    else:
        logits = logits.view(b, k, -1)
    return logits.mean(1)
