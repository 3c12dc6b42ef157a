"""Class-balanced sampling (AffectNet, spec section 5)."""
from __future__ import annotations

from typing import Iterator, Sequence

import torch
from torch.utils.data import Sampler

from adadf.errors import UserError


class ClassBalancedSampler(Sampler[int]):
    """Each epoch: ``m`` = the smallest class count; draw ``m`` samples of every class without
    replacement, concatenate, shuffle. ``len`` is ``m * num_classes``.

    Deterministic in ``seed``: the sampler owns a ``torch.Generator`` seeded from it. Successive
    epochs differ because the generator advances; ``set_epoch(e)`` (called by the trainer before each
    pass) reseeds it from ``(seed, e)``, so a resumed run draws the same samples as an uninterrupted one.
    """

    def __init__(self, labels: Sequence[int], num_classes: int, seed: int = 0,
                 class_names: Sequence[str] | None = None) -> None:
        labels_t = torch.as_tensor(list(labels), dtype=torch.long)
        counts = torch.bincount(labels_t, minlength=num_classes)
        empty = [i for i in range(num_classes) if counts[i] == 0]
        if empty:
            names = [class_names[i] if class_names else str(i) for i in empty]
            raise UserError(f"dataset.balanced=true: class {', '.join(names)} has no training images; "
                            "the class-balanced sampler needs every class")
        self.class_indices = [(labels_t == c).nonzero().flatten() for c in range(num_classes)]
        self.per_class = int(counts.min())
        self.seed = int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)

    def set_epoch(self, epoch: int) -> None:
        self.generator.manual_seed(self.seed * 1_000_003 + int(epoch))

    def __len__(self) -> int:
        return self.per_class * len(self.class_indices)

    def __iter__(self) -> Iterator[int]:
        g = self.generator
        picks = [idx[torch.randperm(idx.numel(), generator=g)[: self.per_class]] for idx in self.class_indices]
        order = torch.cat(picks)
        yield from order[torch.randperm(order.numel(), generator=g)].tolist()
