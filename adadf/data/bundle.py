"""What every dataset builder returns: the loaders and facts the trainer needs."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from adadf.data.noise import flip_labels
from adadf.data.samplers import distributed_sampler, recording
from adadf.data.workers import PersistentLoader
from adadf.errors import UserError

BatchTransform = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class DataBundle:
    """Loaders for one dataset.

    Loaders yield ``(images, labels)`` with images ``[B, 3, H, W]`` or, for multi-crop data,
    ``[B, num_crops, 3, H, W]``. When a ``*_batch_transform`` is set, the loader yields raw uint8
    images and the trainer applies the transform on the training device (batched augmentation and
    normalisation); otherwise images arrive normalised.

    Per training sample ``i`` (the index the training sampler yields, also the position in
    ``clean_train_loader``): ``train_paths[i]`` (relative to the dataset root, or an id such as
    ``synthetic/train/000123``) and ``train_labels[i]``, the label as trained (noisy under
    ``dataset.label_noise``; ``clean_train_labels`` then holds the originals, else it is None).
    """

    train_loader: DataLoader
    test_loader: DataLoader
    clean_train_loader: DataLoader  # training images, test transform, each sample once, in order
    num_classes: int
    class_names: list[str]
    train_paths: list[str]
    train_labels: list[int]
    clean_train_labels: list[int] | None = None
    val_loader: DataLoader | None = None
    num_crops: int = 1
    train_batch_transform: BatchTransform | None = None
    eval_batch_transform: BatchTransform | None = None
    pipeline: str | None = None  # the input pipeline that runs (dataset.pipeline resolved); None: the dataset's own

    def flipped(self) -> list[FlippedLabel]:
        """The training samples whose label noise changed, in index order (empty without noise)."""
        if self.clean_train_labels is None:
            return []
        return [FlippedLabel(i, self.train_paths[i], clean, noisy)
                for i, (clean, noisy) in enumerate(zip(self.clean_train_labels, self.train_labels)) if clean != noisy]

    def with_eval_batch_size(self, batch_size: int) -> DataBundle:
        """This bundle with the test and validation loaders at ``batch_size`` (the same samples in
        the same order; :func:`rebatched`). The training and clean-training loaders keep theirs: the
        class-distribution passes sum over each batch, and the augmented one is the training loader."""
        return dataclasses.replace(
            self, test_loader=rebatched(self.test_loader, batch_size),
            val_loader=rebatched(self.val_loader, batch_size) if self.val_loader is not None else None,
        )

    def train_order(self) -> list[int]:
        """Sample indices of the most recently started training-loader iteration, in delivery order:
        batch ``k`` holds ``order[k * B:(k + 1) * B]`` (a dropped last partial batch is left out)."""
        order = self.train_loader.sampler.order  # type: ignore[union-attr]
        delivered = len(self.train_loader) * (self.train_loader.batch_size or 1)
        return list(order[:delivered])


class FlippedLabel(NamedTuple):
    """One training sample whose label ``dataset.label_noise`` changed."""

    index: int
    path: str
    clean: int
    noisy: int


class Relabeled(Dataset):
    """``dataset``'s items with the labels replaced by ``labels`` (label noise)."""

    def __init__(self, dataset: Dataset, labels: Sequence[int]) -> None:
        self.dataset = dataset
        self.labels = list(labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        return self.dataset[i][0], self.labels[i]


def make_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    num_workers: int,
    train: bool,
    seed: int,
    sampler: Sampler | None = None,
    pin_memory: bool | None = None,
) -> DataLoader:
    """A loader with the reference's settings: training shuffles and drops the last partial batch.

    Under torchrun (an initialised process group) each rank gets its shard
    (:func:`adadf.data.samplers.distributed_sampler`). A training loader's sampler records each
    epoch's order (:func:`adadf.data.samplers.recording`: the same draws as ``shuffle=True``).
    """
    sampler = distributed_sampler(len(dataset), train=train, seed=seed, sampler=sampler)
    generator = torch.Generator().manual_seed(seed)
    if train:
        sampler = recording(sampler, dataset, generator)
    # Worker processes persist across passes (no pool start and shutdown per pass) and are reseeded
    # per pass from the per-epoch reseeded generator, as fresh workers would be (adadf.data.workers),
    # so a resumed run draws exactly what an uninterrupted one would.
    loader_class = PersistentLoader if num_workers > 0 else DataLoader
    return loader_class(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=train,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        generator=generator,
    )


def rebatched(loader: DataLoader, batch_size: int) -> DataLoader:
    """An evaluation ``loader`` (no shuffling, no dropped batch) with another batch size: the same
    sampler (a rank's shard under torchrun), dataset, workers and collation; ``loader`` itself when
    the size is already ``batch_size``."""
    if loader.batch_size == batch_size:
        return loader
    if hasattr(loader, "rebatched"):  # adadf.data.resident.ResidentLoader
        return loader.rebatched(batch_size)
    if loader.drop_last:
        raise ValueError("rebatched: a loader that drops its last batch would lose other samples")
    return DataLoader(
        loader.dataset, batch_size=batch_size, sampler=loader.sampler, num_workers=loader.num_workers,
        collate_fn=loader.collate_fn, pin_memory=loader.pin_memory, worker_init_fn=loader.worker_init_fn,
        persistent_workers=loader.persistent_workers, generator=loader.generator,
        prefetch_factor=loader.prefetch_factor, multiprocessing_context=loader.multiprocessing_context,
    )


def check_class_names(names: Sequence[str], num_classes: int, key: str = "dataset.num_classes") -> None:
    if len(names) != num_classes:
        raise UserError(f"{key}={num_classes}: the data has {len(names)} classes ({', '.join(names)})")


def stratified_split(labels: Sequence[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices (keep, held_out) with ``fraction`` of every class held out (at least one per class
    with two or more samples). Deterministic in ``seed``; independent of the loader order."""
    generator = torch.Generator().manual_seed(seed)
    labels_t = torch.as_tensor(list(labels))
    keep: list[int] = []
    held: list[int] = []
    for c in labels_t.unique().tolist():
        idx = (labels_t == c).nonzero().flatten()
        idx = idx[torch.randperm(idx.numel(), generator=generator)].tolist()
        n_held = min(max(1, round(len(idx) * fraction)), len(idx) - 1) if len(idx) > 1 else 0
        held += idx[:n_held]
        keep += idx[n_held:]
    return sorted(keep), sorted(held)


def build_bundle(
    *,
    train_set: Dataset,
    test_set: Dataset,
    clean_train_set: Dataset,
    train_labels: Sequence[int],
    train_paths: Sequence[str],
    class_names: list[str],
    batch_size: int,
    num_workers: int,
    loader_seed: int,
    val_fraction: float,
    label_noise: float,
    noise_seed: int | None,
    eval_workers: int | None = None,
    train_sampler: Callable[[Sequence[int]], Sampler] | None = None,
    num_crops: int = 1,
    train_batch_transform: BatchTransform | None = None,
    eval_batch_transform: BatchTransform | None = None,
    pipeline: str | None = None,
) -> DataBundle:
    """Loaders for a dataset given its train/test sets (every builder ends here).

    ``clean_train_set`` holds the same samples as ``train_set`` with the test transform (used for
    the clean class-distribution pass and for the validation split). ``val_fraction`` > 0 holds out
    a stratified part of the training set as validation (the honest protocol). ``train_sampler``
    builds a sampler from the labels of the (possibly reduced) training set, e.g. class-balanced.
    ``eval_workers`` (default ``num_workers``) serves the evaluation loaders: 0 where an item costs
    nothing to load. ``label_noise`` flips that fraction of the (kept) training labels
    (:func:`adadf.data.noise.flip_labels`, seeded by ``noise_seed``, None: ``loader_seed``, the run's
    seed); validation and test labels stay clean.
    """
    eval_workers = num_workers if eval_workers is None else eval_workers
    val_loader = None
    labels, paths = list(train_labels), list(train_paths)
    if val_fraction > 0:
        keep, held = stratified_split(labels, val_fraction, loader_seed)
        val_set = Subset(clean_train_set, held)
        train_set, clean_train_set = Subset(train_set, keep), Subset(clean_train_set, keep)
        labels, paths = [labels[i] for i in keep], [paths[i] for i in keep]
        val_loader = make_loader(val_set, batch_size=batch_size, num_workers=eval_workers, train=False,
                                 seed=loader_seed)
    clean_labels = None
    if label_noise > 0:
        clean_labels = labels
        labels = flip_labels(clean_labels, len(class_names), label_noise,
                             loader_seed if noise_seed is None else noise_seed)
        train_set, clean_train_set = Relabeled(train_set, labels), Relabeled(clean_train_set, labels)
    sampler = train_sampler(labels) if train_sampler is not None else None
    return DataBundle(
        train_loader=make_loader(train_set, batch_size=batch_size, num_workers=num_workers, train=True,
                                 seed=loader_seed, sampler=sampler),
        test_loader=make_loader(test_set, batch_size=batch_size, num_workers=eval_workers, train=False,
                                seed=loader_seed),
        clean_train_loader=make_loader(clean_train_set, batch_size=batch_size, num_workers=eval_workers,
                                       train=False, seed=loader_seed),
        num_classes=len(class_names),
        class_names=class_names,
        train_paths=paths,
        train_labels=labels,
        clean_train_labels=clean_labels,
        val_loader=val_loader,
        num_crops=num_crops,
        train_batch_transform=train_batch_transform,
        eval_batch_transform=eval_batch_transform,
        pipeline=pipeline,
    )
