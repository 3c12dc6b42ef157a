"""What a network returns for a batch, by name: the engine, the methods and the reports read fields,
never positions (a method's network may have one branch, two, or feature maps)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple, Optional, Union

from torch import Tensor


class DualOutputs(NamedTuple):
    """The Ada-DF network's: auxiliary logits z_1, target logits z_2 (the ones evaluation reads)
    and the mean attention a [N]. A tuple, so ``z1, z2, a = model(x)`` keeps working."""

    aux_logits: Tensor  # [N, C]
    logits: Tensor  # [N, C]
    attention: Tensor  # [N]


@dataclass
class HeadOutputs:
    """A single-branch network's (:class:`adadf.models.single.HeadNetwork`): its head fills what it has."""

    logits: Tensor  # [N, C]: what the method trains on and evaluation reads
    attention: Optional[Tensor] = None  # [N], a per-sample weight in (0, 1) if the head has one
    features: Optional[Tensor] = None  # [N, D]: the vector the classifier reads
    feature_map: Optional[Tensor] = None  # [N, F, h, w]: the body's last map
    extra: dict[str, Tensor] = field(default_factory=dict)  # method-specific tensors, by name


Outputs = Union[DualOutputs, HeadOutputs]


def named(outputs: Outputs | tuple) -> Outputs:
    """``outputs`` with names: a plain ``(z1, z2, a)`` tuple (a hand-made batch) as :class:`DualOutputs`."""
    if isinstance(outputs, tuple) and not isinstance(outputs, DualOutputs):
        return DualOutputs(*outputs)
    return outputs
