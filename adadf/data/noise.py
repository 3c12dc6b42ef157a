"""Synthetic label noise (``dataset.label_noise``), as in the FER noise-robustness protocol (SCN,
RUL, EAC: 10/20/30% of RAF-DB's training labels flipped).

A pure function of the clean labels, the fraction and the seed: exactly ``round(p * N)`` labels are
flipped, each to a uniformly drawn *other* class. It draws from its own ``numpy.random.Generator``
(PCG64, platform-independent), never from a global RNG, so every process (DDP ranks, a resumed run,
another machine) flips the same samples the same way.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

NOISE_STREAM = 0x4E015E  # keeps this stream apart from others seeded with the same number


def flip_labels(labels: Sequence[int], num_classes: int, fraction: float, seed: int) -> list[int]:
    """``labels`` with exactly ``round(fraction * len(labels))`` of them flipped to another class."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction={fraction}: expected a value in [0, 1)")
    clean = np.asarray(labels, dtype=np.int64)
    count = round(fraction * len(clean))
    if count == 0:
        return clean.tolist()
    if num_classes < 2:
        raise ValueError("label noise needs at least two classes")
    rng = np.random.default_rng([NOISE_STREAM, int(seed)])
    chosen = rng.choice(len(clean), size=count, replace=False)
    offsets = rng.integers(1, num_classes, size=count)  # 1..C-1: never the same class
    noisy = clean.copy()
    noisy[chosen] = (clean[chosen] + offsets) % num_classes
    return noisy.tolist()
