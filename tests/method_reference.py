"""Weights and batches shared by the comparison methods' matching tests (tests/test_method_match.py)
and the scripts that made their fixtures from the original code (tests/fixtures/methods/make_*.py).

Both sides fill their networks with :func:`seeded_state`, which depends only on each parameter's
canonical name and shape, never on construction order, so two different implementations of one
network get the same numbers without copying a state dict between them.
"""
from __future__ import annotations

import json
import math
import zlib
from pathlib import Path
from typing import Mapping

import torch

FIXTURES = Path(__file__).parent / "fixtures" / "methods"


def _tensor(name: str, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "num_batches_tracked":
        return torch.zeros(shape, dtype=torch.long)
    if leaf == "running_mean":
        return 0.1 * torch.randn(shape, generator=g)
    if leaf == "running_var":
        return 0.5 + torch.rand(shape, generator=g)
    if leaf == "bias":
        return 0.1 * torch.randn(shape, generator=g)
    if len(shape) == 1:  # a norm layer's scale
        return 1.0 + 0.1 * torch.randn(shape, generator=g)
    fan_in = math.prod(shape[1:])
    return torch.randn(shape, generator=g) * math.sqrt(2.0 / fan_in)  # He-scaled: activations stay O(1)


def seeded_state(shapes: Mapping[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict for canonical names -> shapes (float32; BN counters int64)."""
    return {name: _tensor(name, tuple(shape), seed) for name, shape in shapes.items()}


def seeded_batch(batch: int, num_classes: int = 7, size: int = 224, seed: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Images [B, 3, size, size] ~ N(0, 1) (already normalised) and labels [B]."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, size, size, generator=g)
    labels = torch.randint(0, num_classes, (batch,), generator=g)
    return images, labels


def grad_summary(named: Mapping[str, torch.Tensor | None]) -> dict[str, list[float]]:
    """Per canonical name: [sum, L2 norm, first element] of a gradient (float64), or absent if None."""
    out = {}
    for name, grad in named.items():
        if grad is None:
            continue
        g = grad.detach().double()
        out[name] = [float(g.sum()), float(g.norm()), float(g.flatten()[0])]
    return out


def load_fixture(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())
