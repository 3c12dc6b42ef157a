"""The device pipeline's data held whole where it is read: on the training GPU when it fits, else in
pinned host memory; batches are index -> gather, with no loader worker processes.

``dataset.pipeline=device`` reads a decoded uint8 cache (:mod:`adadf.data.fast`) whose items need no
per-image work, so a worker process per loader only slices a memory map and pickles the slice to the
training process. A :class:`ResidentLoader` replaces such a loader (``dataset.resident=true``, the
default): it holds the split's pixels as one uint8 tensor (:class:`ResidentSet`, shared by the
loaders over the same cache file: training, clean training, validation), draws each batch's indices
from **the same sampler object** the DataLoader had (shuffling per epoch, the class-balanced sampler,
DDP shards, ``drop_last``, the recorded order behind ``DataBundle.train_order()``), and gathers the
batch with one ``index_select`` on the GPU (the indices copied to it once per batch; the labels are
gathered there too), or on the host with numpy's ``take`` and one transposing copy.

Where the pixels live (:func:`place`, called by :func:`adadf.app.build_data` with the training device):

- CUDA: on the GPU when the set takes at most ``dataset.resident_max_share`` of the free GPU memory
  (RAF-DB at 100 px: 368 MB); otherwise, or when the GPU runs out of memory while the set is copied
  (one line naming the set, its size and the free memory), in pinned host memory, from which each
  gathered batch is copied to the GPU asynchronously. A set larger than that share of the host's
  available memory is not pinned either: it stays memory-mapped (pageable), with a log line.
- CPU: the cache's memory map itself (copy-on-write, so no copy of the file; the page cache is
  shared), gathered in the training process.

Batches are those of today's DataLoader bit for bit (tests/test_resident.py compares every batch of
two epochs and a training run's metrics): same indices, and images as ``default_collate`` builds them
(contiguous ``[B, 3, S, S]`` uint8; int64 labels). The loader's generator gets the one draw per pass
that a DataLoader iterator takes from it, so samplers sharing it draw as before.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import BatchSampler, Dataset, SequentialSampler, Subset

log = logging.getLogger(__name__)

LOADER_FIELDS = ("train_loader", "test_loader", "clean_train_loader", "val_loader")


def megabytes(nbytes: int) -> str:
    return f"{nbytes / 2**20:,.0f} MB"


def host_available() -> int | None:
    """The host's available memory in bytes (``MemAvailable`` of /proc/meminfo); None when unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def gpu_free(device: torch.device) -> int:
    """Free memory of the CUDA ``device`` in bytes."""
    return torch.cuda.mem_get_info(device)[0]


def copy_to(pixels: torch.Tensor, device: torch.device) -> torch.Tensor:
    return pixels.to(device)


def pinned(pixels: torch.Tensor) -> torch.Tensor:
    return pixels.pin_memory()


class ResidentSet:
    """One cache file's uint8 pixels ``[N, S, S, 3]`` as a tensor: memory-mapped (copy-on-write) until
    :meth:`place` moves them; ``where`` says where they are (``memory map``, ``pinned``, a device)."""

    def __init__(self, path: Path, split: str, max_share: float) -> None:
        self.path = Path(path)
        self.split = split
        self.max_share = float(max_share)
        self.pixels = torch.from_numpy(np.load(self.path, mmap_mode="c"))
        self.where = "memory map"
        self.target = torch.device("cpu")  # where batches go

    @property
    def nbytes(self) -> int:
        return self.pixels.numel() * self.pixels.element_size()

    @property
    def on_device(self) -> bool:
        return self.pixels.device.type != "cpu"

    def describe(self) -> str:
        return f"the {self.split} set ({megabytes(self.nbytes)}, {self.path.name})"

    def place(self, device: torch.device) -> None:
        """Move the pixels for training on ``device`` (module docstring); once per set."""
        device = torch.device(device)
        if self.target == device and device.type == "cuda":
            return
        self.target = device
        if device.type != "cuda":
            log.info("%s is read from its memory map in the training process (no loader workers)", self.describe())
            return
        free = gpu_free(device)
        if self.nbytes > self.max_share * free:
            log.info("%s stays in host memory: more than dataset.resident_max_share=%g of the %s free on %s",
                     self.describe(), self.max_share, megabytes(free), device)
            return self._to_host()
        try:
            self.pixels = copy_to(self.pixels, device)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            log.warning("%s: out of memory on %s placing it (%s free); reading it from pinned host memory",
                        self.describe(), device, megabytes(gpu_free(device)))
            return self._to_host()
        self.where = str(device)
        log.info("%s lives on %s (%s free before)", self.describe(), device, megabytes(free))

    def _to_host(self) -> None:
        available = host_available()
        if available is not None and self.nbytes > self.max_share * available:
            log.info("%s stays memory-mapped (pageable): more than dataset.resident_max_share=%g of the "
                     "host's %s available", self.describe(), self.max_share, megabytes(available))
            return
        try:
            self.pixels = pinned(self.pixels)
            self.where = "pinned"
        except RuntimeError as err:
            log.info("%s stays memory-mapped (pageable): pinning failed (%s)", self.describe(),
                     str(err).splitlines()[0] if str(err) else type(err).__name__)

    def gather(self, rows: torch.Tensor) -> torch.Tensor:
        """The images at ``rows`` (on the pixels' device) as ``default_collate`` stacks them:
        contiguous uint8 ``[B, 3, S, S]``; from host memory, in pinned memory when bound for CUDA."""
        if self.on_device:
            return self.pixels.index_select(0, rows).permute(0, 3, 1, 2).contiguous()
        # On the host numpy's take and transposing copy: ~10x faster than torch's uint8 index_select
        # and permuted copy on the CPU (measured: 0.8 ms vs 15 ms for 64 images at 100 px).
        picked = np.take(self.pixels.numpy(), rows.numpy(), axis=0).transpose(0, 3, 1, 2)
        out = torch.empty(picked.shape, dtype=torch.uint8, pin_memory=self.target.type == "cuda")
        np.copyto(out.numpy(), picked)
        return out


def untagged(dataset: Dataset) -> Dataset:
    """``dataset`` without the per-pass tags of persistent workers (``adadf.data.workers.PassSeeded``)."""
    return dataset.dataset if type(dataset).__name__ == "PassSeeded" else dataset


def flatten(dataset: Dataset) -> tuple[Dataset, list[int] | None, list[int]] | None:
    """``(cache dataset, its rows or None for all, labels)`` behind ``dataset`` (a plain
    :class:`~adadf.data.cached.CachedImageDataset` without per-image augmentation, under any
    ``Subset`` / ``Relabeled`` / worker ``PassSeeded`` wrappers); None for anything else."""
    from adadf.data.bundle import Relabeled
    from adadf.data.cached import CachedImageDataset

    if untagged(dataset) is not dataset:
        return flatten(untagged(dataset))
    if type(dataset) is CachedImageDataset and dataset.augment is None:
        return dataset, None, list(dataset.labels)
    if isinstance(dataset, Subset):
        inner = flatten(dataset.dataset)
        if inner is None:
            return None
        base, rows, labels = inner
        indices = [int(i) for i in dataset.indices]
        return base, [rows[i] for i in indices] if rows is not None else indices, [labels[i] for i in indices]
    if isinstance(dataset, Relabeled):
        inner = flatten(dataset.dataset)
        return None if inner is None else (inner[0], inner[1], list(dataset.labels))
    return None


class ResidentLoader:
    """A loader over a :class:`ResidentSet` (module docstring): yields ``(images, labels)``, uint8
    ``[B, 3, S, S]`` and int64 ``[B]``, on the set's device. ``sampler``, ``batch_size``,
    ``drop_last``, ``generator`` and ``dataset`` (the loader's dataset, unwrapped from worker tags)
    are those of the DataLoader it replaces; ``num_workers`` is 0."""

    num_workers = 0

    def __init__(self, dataset: Dataset, pixels: ResidentSet, rows: Sequence[int] | None, labels: Sequence[int],
                 *, batch_size: int, sampler: Any, drop_last: bool, generator: torch.Generator | None) -> None:
        self.dataset = dataset
        self.pixels = pixels
        self.sampler = sampler if sampler is not None else SequentialSampler(range(len(labels)))
        self.batch_size = int(batch_size)
        self.drop_last = bool(drop_last)
        self.generator = generator
        self.batch_sampler = BatchSampler(self.sampler, self.batch_size, self.drop_last)
        self._rows = torch.as_tensor(list(rows), dtype=torch.int64) if rows is not None else None
        self._labels = torch.as_tensor(list(labels), dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def rebatched(self, batch_size: int) -> ResidentLoader:
        """The same samples, sampler and pixels in batches of ``batch_size``."""
        other = ResidentLoader(self.dataset, self.pixels, None, [], batch_size=batch_size, sampler=self.sampler,
                               drop_last=self.drop_last, generator=self.generator)
        other._rows, other._labels = self._rows, self._labels
        return other

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.generator is not None:  # the draw a DataLoader iterator takes (its workers' base seed)
            torch.empty((), dtype=torch.int64).random_(generator=self.generator)
        device = self.pixels.pixels.device
        if self._labels.device != device:  # the set was placed since: its row and label tables follow
            self._labels = self._labels.to(device)
            self._rows = self._rows.to(device) if self._rows is not None else None
        return self._batches(device)

    def _batches(self, device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        to_device = device.type != "cpu"
        for batch in self.batch_sampler:
            index = torch.tensor(batch, dtype=torch.int64, pin_memory=to_device)
            if to_device:
                index = index.to(device, non_blocking=True)  # the batch's one host-to-device copy
            rows = self._rows.index_select(0, index) if self._rows is not None else index
            yield self.pixels.gather(rows), self._labels.index_select(0, index)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({len(self.dataset)} images in {self.pixels.where}, batch_size={self.batch_size}, "
                f"sampler={type(self.sampler).__name__})")


def resident_loader(loader: Any, sets: dict[Path, ResidentSet], split: str, max_share: float) -> Any:
    """``loader`` as a :class:`ResidentLoader` over its cache file (a set shared through ``sets``),
    or ``loader`` itself when its dataset is not a plain cache."""
    if loader is None or isinstance(loader, ResidentLoader):
        return loader
    flat = flatten(loader.dataset)
    if flat is None:
        return loader
    base, rows, labels = flat
    if base.path not in sets:
        sets[base.path] = ResidentSet(base.path, split, max_share)
    return ResidentLoader(untagged(loader.dataset), sets[base.path], rows, labels, batch_size=loader.batch_size,
                          sampler=loader.sampler, drop_last=loader.drop_last, generator=loader.generator)


def resident_bundle(bundle: Any, max_share: float) -> Any:
    """``bundle`` (a :class:`~adadf.data.bundle.DataBundle`) with every loader over a plain cache as a
    :class:`ResidentLoader`, the pixels memory-mapped until :func:`place`; the training set first, so
    the loaders over the training cache share its set."""
    sets: dict[Path, ResidentSet] = {}
    splits = {"train_loader": "train", "clean_train_loader": "train", "val_loader": "train", "test_loader": "test"}
    return dataclasses.replace(bundle, **{name: resident_loader(getattr(bundle, name), sets, splits[name], max_share)
                                          for name in LOADER_FIELDS})


def resident_sets(bundle: Any) -> list[ResidentSet]:
    """The distinct sets behind ``bundle``'s resident loaders, training first."""
    found: dict[int, ResidentSet] = {}
    for name in LOADER_FIELDS:
        loader = getattr(bundle, name, None)
        if isinstance(loader, ResidentLoader):
            found.setdefault(id(loader.pixels), loader.pixels)
    return list(found.values())


def place(bundle: Any, device: torch.device | str | None) -> Any:
    """Place ``bundle``'s resident sets for training on ``device`` (None: CUDA when available);
    returns ``bundle``."""
    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    for pixels in resident_sets(bundle):
        pixels.place(torch.device(device))
    return bundle


__all__ = ["ResidentLoader", "ResidentSet", "place", "resident_bundle", "resident_sets"]
