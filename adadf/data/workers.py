"""Loader worker processes that live for the whole run, yet draw each pass's augmentations exactly as
fresh workers would.

A ``DataLoader`` with ``persistent_workers=True`` seeds its workers once, when they start; each later
pass continues their random streams, so what a pass draws would depend on the passes before it (a
resumed run would draw differently from a straight one). Fresh workers each pass (the alternative)
cost a pool start and shutdown per pass: three per epoch (training, class distributions, test).

Here each pass tags its indices with the seed a fresh iterator would have drawn from the loader's
generator, and a worker reseeds ``random``, ``torch`` and ``numpy`` with it, as torch seeds a new
worker, before its first item of the pass. The draws are then those of fresh workers, bit for bit.
"""
from __future__ import annotations

import random
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, get_worker_info
from torch.utils.data._utils.worker import _generate_state  # numpy's per-worker seed, as torch derives it

Tag = tuple[int, int]  # (pass number, base seed)


class _PassTag:
    """The current pass's tag, shared by the loader and its batch sampler (no reference cycle
    between the loader and its iterator, so a dropped loader shuts its workers down at once)."""

    def __init__(self) -> None:
        self.passes = 0
        self.tag: Tag = (0, 0)

    def next(self, base_seed: int) -> None:
        self.passes += 1
        self.tag = (self.passes, base_seed)


class _TaggedBatches:
    """The loader's batches of indices, each index as ``(tag, index)``."""

    def __init__(self, batches: BatchSampler, current: _PassTag) -> None:
        self.batches, self.current = batches, current

    def __iter__(self) -> Iterator[list[tuple[Tag, int]]]:
        tag = self.current.tag  # read once the pass has started (iteration is lazy)
        for batch in self.batches:
            yield [(tag, index) for index in batch]

    def __len__(self) -> int:
        return len(self.batches)


class PassSeeded(Dataset):
    """``dataset`` whose items may be asked for as ``(tag, index)``: in a worker, the first item of a
    new tag reseeds the worker's random generators for that pass. A plain index is passed through."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self._tag: Tag | None = None

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, tuple):
            tag, key = key
            if tag != self._tag:
                self._tag = tag
                reseed_worker(tag[1])
        return self.dataset[key]


def reseed_worker(base_seed: int) -> None:
    """Seed this worker's generators as torch seeds a worker it starts with ``base_seed``
    (``torch.utils.data._utils.worker._worker_loop``); nothing outside a worker process."""
    info = get_worker_info()
    if info is None:
        return
    seed = base_seed + info.id
    random.seed(seed)
    torch.manual_seed(seed)
    np.random.seed(_generate_state(base_seed, info.id))


class PersistentLoader(DataLoader):
    """A ``DataLoader`` with ``num_workers > 0`` whose workers persist across passes and are reseeded
    per pass (module docstring). ``sampler``, ``generator`` and ``len`` are the plain loader's;
    ``dataset`` is the given one wrapped in :class:`PassSeeded`."""

    def __init__(self, dataset: Dataset, **kwargs: Any) -> None:
        if not kwargs.get("num_workers"):
            raise ValueError("PersistentLoader needs num_workers > 0")
        self._current = _PassTag()
        super().__init__(PassSeeded(dataset), persistent_workers=True, **kwargs)

    @property
    def _index_sampler(self) -> Any:
        # What every iterator iterates (DataLoader's own property: the batch sampler).
        return _TaggedBatches(self.batch_sampler, self._current)

    def __iter__(self) -> Any:
        generator = self.generator if self.generator is not None else torch.default_generator
        state = generator.get_state()
        # The seed a fresh iterator draws first from the loader's generator (_BaseDataLoaderIter).
        self._current.next(int(torch.empty((), dtype=torch.int64).random_(generator=generator).item()))
        if self._iterator is None:
            generator.set_state(state)  # the first iterator draws that same seed itself
        return super().__iter__()

