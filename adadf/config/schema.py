"""Schemas of the fixed-shape config groups, with the ranges a value must lie in.

Groups with a ``_target_`` (dataset, backbone, optimizer, scheduler, logger) are checked by the
signature of what they instantiate; these dataclasses cover the rest.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import Enum
from typing import Optional


class LDPass(str, Enum):
    """Where the class-distribution statistics come from after each epoch."""

    augmented = "augmented"  # reference: an eval-mode pass over the training loader as is
    clean = "clean"  # test transform, every training sample once
    online = "online"  # accumulated during the training epoch itself (no extra pass)


@dataclass
class FusionConfig:
    threshold: float = 0.7
    beta: float = 3.0
    max_weight: float = 1.0
    min_weight: float = 0.2
    tops: float = 0.7
    margin: float = 0.07
    sharpen: bool = False
    T: float = 1.2
    drop_rate: float = 0.0
    label_smoothing: float = 0.0
    alpha: Optional[float] = None
    fallback_mass: float = 0.4
    detach_target: Optional[bool] = None  # None: auto (see resolve_detach_target)
    ld_pass: LDPass = LDPass.augmented


def resolve_detach_target(fusion: FusionConfig, checkpoint: str | None) -> FusionConfig:
    """``detach_target=None`` (auto) -> the reference's ``False`` when a pretrained ``checkpoint``
    initialises the model, ``True`` when it trains from scratch: without a pretrained trunk the
    non-detached fused target pulls both branches towards uniform predictions, the attention
    collapses and nothing is learnt (README, "Training from scratch")."""
    if fusion.detach_target is not None:
        return fusion
    return dataclasses.replace(fusion, detach_target=checkpoint is None)


@dataclass
class TrainerConfig:
    epochs: int = 75
    device: str = "auto"
    amp: bool = False
    amp_dtype: str = "bfloat16"
    channels_last: bool = False
    compile: bool = False
    resume: Optional[str] = None
    progress: bool = True
    deterministic: bool = False


def _open01(x: float) -> bool:
    return 0.0 < x < 1.0


# key -> (check, what is expected). Checked after types, so values have their schema type.
RANGES = {
    "fusion.threshold": (_open01, "a value in (0, 1)"),
    "fusion.beta": (lambda x: x >= 1, "a value >= 1"),
    "fusion.max_weight": (lambda x: 0 <= x <= 1, "a value in [0, 1]"),
    "fusion.min_weight": (lambda x: 0 <= x <= 1, "a value in [0, 1]"),
    "fusion.tops": (_open01, "a value in (0, 1)"),
    "fusion.margin": (lambda x: x >= 0, "a value >= 0"),
    "fusion.T": (lambda x: x > 0, "a value > 0"),
    "fusion.drop_rate": (lambda x: 0 <= x < 1, "a value in [0, 1)"),
    "fusion.label_smoothing": (lambda x: 0 <= x < 1, "a value in [0, 1)"),
    "fusion.alpha": (lambda x: x is None or 0 <= x <= 1, "null or a value in [0, 1]"),
    "fusion.fallback_mass": (lambda x: 0 <= x <= 1, "a value in [0, 1]"),
    "trainer.epochs": (lambda x: x >= 1, "an integer >= 1"),
    "trainer.amp_dtype": (lambda x: x in ("bfloat16", "float16"), "bfloat16 or float16"),
    "trainer.device": (
        lambda x: x in ("auto", "cpu", "cuda") or x.startswith("cuda:"),
        "auto, cpu, cuda or cuda:N",
    ),
    "dataset.batch_size": (lambda x: isinstance(x, int) and x >= 1, "an integer >= 1"),
    "dataset.num_workers": (lambda x: isinstance(x, int) and x >= 0, "an integer >= 0"),
    "dataset.num_classes": (lambda x: isinstance(x, int) and x >= 2, "an integer >= 2"),
    "dataset.image_size": (lambda x: isinstance(x, int) and x >= 16, "an integer >= 16"),
    "dataset.val_fraction": (lambda x: isinstance(x, (int, float)) and 0 <= x < 1, "a value in [0, 1)"),
    "optimizer.lr": (lambda x: isinstance(x, (int, float)) and x > 0, "a number > 0"),
    "seed": (lambda x: isinstance(x, int), "an integer"),
}
