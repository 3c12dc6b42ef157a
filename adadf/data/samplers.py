"""Samplers: class-balanced sampling (AffectNet, spec section 5), sharding across torchrun ranks,
and the recording wrappers that tell which samples a training epoch delivered, in order."""
from __future__ import annotations

from typing import Iterator, Sequence, Sized

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler, RandomSampler, Sampler

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


# --------------------------------------------------------------------------------------------
# Sharding across torchrun ranks
# --------------------------------------------------------------------------------------------
class ShardSampler(Sampler[int]):
    """Evaluation sharding: rank r gets samples r, r + N, r + 2N, ... (no padding, no shuffle), so
    summing per-rank counts over all ranks counts every sample exactly once."""

    def __init__(self, num_samples: int, rank: int, world_size: int) -> None:
        self.indices = range(rank, num_samples, world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class DistributedSamplerWrapper(Sampler[int]):
    """Shards any sampler (e.g. class-balanced) across ranks.

    Every rank draws the same full index sequence from the wrapped sampler (it must be a function
    of the epoch: ``set_epoch`` is passed on), keeps every N-th index from its rank on and, with
    ``drop_tail`` (training), first truncates the sequence to a multiple of the world size, as
    ``DistributedSampler(drop_last=True)`` does, so that every rank runs as many batches.
    """

    def __init__(self, sampler: Sampler, rank: int, world_size: int, drop_tail: bool = True) -> None:
        self.sampler = sampler
        self.rank = rank
        self.world_size = world_size
        self.drop_tail = drop_tail

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        indices = list(iter(self.sampler))
        end = len(indices) - len(indices) % self.world_size if self.drop_tail else len(indices)
        return iter(indices[self.rank:end:self.world_size])

    def __len__(self) -> int:
        n = len(self.sampler)  # type: ignore[arg-type]
        if self.drop_tail:
            return n // self.world_size
        return len(range(self.rank, n, self.world_size))


class _Sized:
    """A stand-in dataset of ``n`` items: ``DistributedSampler`` only needs its length."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n


def process_group() -> tuple[int, int]:
    """(rank, world size) of the initialised torch.distributed group; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def distributed_sampler(dataset_size: int, *, train: bool, seed: int, sampler: Sampler | None = None
                        ) -> Sampler | None:
    """The sampler a loader needs in this process group, or ``sampler`` unchanged in a single process.

    Training: ``DistributedSampler`` (shuffled from ``seed`` and the epoch, tail dropped) or the
    given ``sampler`` sharded; evaluation: ``ShardSampler`` (or the given sampler sharded, no drop).
    """
    rank, world_size = process_group()
    if world_size <= 1:
        return sampler
    if sampler is not None:
        return DistributedSamplerWrapper(sampler, rank, world_size, drop_tail=train)
    if not train:
        return ShardSampler(dataset_size, rank, world_size)
    return DistributedSampler(_Sized(dataset_size), num_replicas=world_size, rank=rank,  # type: ignore[arg-type]
                              shuffle=True, seed=seed, drop_last=True)


# --------------------------------------------------------------------------------------------
# Recording the delivery order of a training epoch
# --------------------------------------------------------------------------------------------
class RecordingRandomSampler(RandomSampler):
    """What ``DataLoader(shuffle=True)`` builds (same class, same draws), plus ``order``: the indices
    of the most recently started iteration.

    A subclass rather than a wrapper so code that reseeds a ``RandomSampler``'s ``generator`` keeps
    working. The whole epoch's order is drawn when iteration starts: the draws are the same, from
    the same generator, in the same sequence as the lazy parent.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.order: list[int] = []

    def __iter__(self) -> Iterator[int]:
        self.order = list(super().__iter__())
        return iter(self.order)


class RecordingSampler(Sampler[int]):
    """Any sampler (class-balanced, DDP's shard samplers) with ``order``: the indices of the most
    recently started iteration. Iterated in the main process, so it works with loader workers."""

    def __init__(self, sampler: Sampler) -> None:
        self.sampler = sampler
        self.order: list[int] = []

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        self.order = list(iter(self.sampler))
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.sampler)  # type: ignore[arg-type]


def recording(sampler: Sampler | None, dataset: Sized, generator: torch.Generator) -> Sampler:
    """``sampler`` (or, when None, the ``RandomSampler`` that ``shuffle=True`` would build from
    ``generator``) made to record its order."""
    if sampler is None:
        return RecordingRandomSampler(dataset, generator=generator)  # type: ignore[arg-type]
    return RecordingSampler(sampler)
