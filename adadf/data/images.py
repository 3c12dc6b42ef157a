"""Image-file datasets: up-front checks, and the one builder every real dataset goes through.

Readers (``raf``, ``affectnet``, ``sfew``, ``folder``) turn a dataset's native layout into two
:class:`ImageIndex` splits; :func:`build_image_bundle` checks them and builds the loaders with the
chosen pipeline:

- ``auto`` (the default): ``device`` when training on CUDA, else ``reference``
  (:func:`resolve_pipeline`; :func:`adadf.app.build_data` resolves it with the training device);
- ``reference``: per-image PIL decoding and torchvision/timm augmentation in DataLoader workers,
  exactly the spec's recipe (:mod:`adadf.data.transforms`);
- ``device``: :func:`adadf.data.fast.build_cached_bundle`: a decoded image cache, the recipe in its
  order (resize -> RandAugment -> flip -> normalise -> erase) batched on the training device;
- ``small_first`` (old name ``fast``, still accepted): the same cache, RandAugment and flip in the
  workers on the small stored image before the resize (deviations: :mod:`adadf.data.fast`).

Validation depth (``verify_images``), all before the first training step:
- every split must be non-empty and every label in range;
- every image file must exist (one directory listing per folder, so cheap even for AffectNet);
- ``auto`` (default) also decodes every image of a split with at most ``AUTO_DECODE_LIMIT`` images
  (RAF-DB, SFEW, AffectNet's val set: seconds); AffectNet's 280k-image train set is only checked for
  existence, since decoding it takes minutes. ``decode`` decodes everything, ``exists`` nothing.
An image that still fails to decode during training stops the run with one line naming the file
(the last completed epoch's checkpoint stays).
"""
from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch.utils.data import Dataset

from adadf.data.bundle import DataBundle, build_bundle, check_class_names
from adadf.data.decode import UnreadableImage, check_decodes, load_rgb
from adadf.data.fast import CACHED_PIPELINES, build_cached_bundle
from adadf.data.index import ImageIndex
from adadf.data.samplers import ClassBalancedSampler
from adadf.data.transforms import eval_transform, make_recipe, train_transform
from adadf.errors import UserError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
AUTO_DECODE_LIMIT = 20_000  # verify_images=auto decodes every image of a split up to this size

PIPELINE_ALIASES = {"fast": "small_first"}  # old name -> current name

__all__ = ["UnreadableImage", "build_image_bundle", "check_split", "is_image_name", "list_dir", "load_rgb",
           "resolve_pipeline", "resolve_root"]


def resolve_pipeline(pipeline: str, device: torch.device | str | None = None) -> str:
    """The pipeline that runs for ``dataset.pipeline``: ``auto`` is ``device`` on a CUDA training
    device and ``reference`` elsewhere (``device`` None: CUDA when available, the trainer's
    ``auto``); old names map to current ones (``fast`` -> ``small_first``, with a warning)."""
    if pipeline == "auto":
        kind = torch.device(device).type if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
        return "device" if kind == "cuda" else "reference"
    if pipeline in PIPELINE_ALIASES:
        log.warning("dataset.pipeline=%s is now called %s (RandAugment before the resize); running %s",
                    pipeline, PIPELINE_ALIASES[pipeline], PIPELINE_ALIASES[pipeline])
        return PIPELINE_ALIASES[pipeline]
    return pipeline


# ------------------------------------------------------------------------------------ small helpers
def resolve_root(root: str | os.PathLike | None, what: str) -> Path:
    """``dataset.root`` as an absolute directory (relative paths against the launch directory)."""
    if root is None or str(root).strip() == "":
        raise UserError(f"dataset.root is not set: pass dataset.root=PATH to {what}")
    try:  # Hydra's launch directory, even if hydra.job.chdir=true moved the cwd
        from hydra.utils import to_absolute_path

        path = Path(to_absolute_path(str(Path(root).expanduser())))
    except ValueError:
        path = Path(root).expanduser().absolute()
    if not path.exists():
        raise UserError(f"dataset.root={root}: no such directory ({path}); expected {what}")
    if not path.is_dir():
        raise UserError(f"dataset.root={root}: not a directory ({path}); expected {what}")
    return path


def is_image_name(name: str) -> bool:
    return not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES


def list_dir(path: Path) -> list[str]:
    """Names in ``path``, sorted; a missing directory is a UserError."""
    try:
        return sorted(os.listdir(path))
    except FileNotFoundError:
        raise UserError(f"{path}: directory not found") from None
    except NotADirectoryError:
        raise UserError(f"{path}: expected a directory, found a file") from None
    except OSError as err:
        raise UserError(f"{path}: cannot list directory ({err.strerror or err})") from None


# ------------------------------------------------------------------------------------ dataset
class ImageFileDataset(Dataset):
    """``index``'s images decoded as RGB and passed through ``transform``; yields (tensor, label)."""

    def __init__(self, index: ImageIndex, transform: Callable) -> None:
        self.index = index
        self.transform = transform

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int):
        return self.transform(load_rgb(self.index.absolute(i))), self.index.labels[i]


# ------------------------------------------------------------------------------------ validation
def check_split(index: ImageIndex, split: str, verify_images: str = "auto", threads: int | None = None) -> None:
    """Up-front checks of one split (see the module docstring; ``verify_images`` is checked by the
    schema, :mod:`adadf.config.dataset`); raises a one-line UserError."""
    if len(index) == 0:
        raise UserError(f"{index.root}: the {split} split is empty")
    num_classes = len(index.class_names)
    for path, label in zip(index.paths, index.labels):
        if not (isinstance(label, int) and 0 <= label < num_classes):
            raise UserError(f"{index.root / path}: label {label!r} out of range 0..{num_classes - 1} ({split} split)")
    check_exist(index.root, index.paths, split)
    decode = verify_images == "decode" or (verify_images == "auto" and len(index) <= AUTO_DECODE_LIMIT)
    if decode:
        start = time.perf_counter()
        paths = [index.root / p for p in index.paths]
        threads = threads or min(8, os.cpu_count() or 1)  # Pillow releases the GIL while decoding
        with ThreadPoolExecutor(max_workers=max(1, min(threads, len(paths)))) as pool:
            for _ in pool.map(check_decodes, paths, chunksize=64):
                pass
        log.info("decoded all %d %s images in %.1f s", len(paths), split, time.perf_counter() - start)
    else:
        log.info("%s split: %d images exist (not decoded up front; dataset.verify_images=decode checks them)",
                 split, len(index))


def check_exist(root: Path, paths: Iterable[str], split: str) -> None:
    """Every ``root / path`` is an existing file: one listing per directory, not one stat per file."""
    listings: dict[str, set[str]] = {}
    for rel in paths:
        parent, _, name = rel.rpartition("/")
        if parent not in listings:
            try:
                listings[parent] = set(os.listdir(root / parent))
            except OSError:
                listings[parent] = set()
        if name not in listings[parent]:
            raise UserError(f"{root / rel}: image not found ({split} split)")


# ------------------------------------------------------------------------------------ the builder
def build_image_bundle(
    train_index: ImageIndex,
    test_index: ImageIndex,
    *,
    num_classes: int,
    recipe: str,
    image_size: int,
    pipeline: str,
    batch_size: int,
    num_workers: int,
    loader_seed: int,
    val_fraction: float,
    balanced: bool,
    verify_images: str,
    label_noise: float,
    noise_seed: int | None,
    resident: bool,
    resident_max_share: float,
) -> DataBundle:
    """Check both splits, then build the loaders with ``pipeline`` (every real dataset comes here;
    its builder passes on the options of its schema, :mod:`adadf.config.dataset`). The pipeline that
    ran is recorded as ``DataBundle.pipeline`` (``auto`` resolved, :func:`resolve_pipeline`).

    ``recipe`` names the augmentation recipe, scaled to ``image_size`` (:func:`make_recipe`);
    ``balanced`` uses :class:`ClassBalancedSampler` for training; ``val_fraction`` holds out a
    stratified part of the training split as validation, ``label_noise`` flips that fraction of the
    training labels (``build_bundle``). ``resident`` / ``resident_max_share``: the ``device``
    pipeline's data held whole, no loader workers (:mod:`adadf.data.resident`).
    """
    check_class_names(train_index.class_names, num_classes)
    recipe = make_recipe(recipe, image_size)
    if train_index.class_names != test_index.class_names:
        raise UserError(f"{test_index.root}: train and test class lists differ")
    check_split(train_index, "train", verify_images)
    check_split(test_index, "test", verify_images)
    sampler = None
    if balanced:
        sampler = partial(ClassBalancedSampler, num_classes=len(train_index.class_names), seed=loader_seed,
                          class_names=train_index.class_names)
    common = dict(train_labels=train_index.labels, train_paths=train_index.paths,
                  class_names=list(train_index.class_names), batch_size=batch_size, num_workers=num_workers,
                  loader_seed=loader_seed, val_fraction=val_fraction, label_noise=label_noise,
                  noise_seed=noise_seed, train_sampler=sampler)
    pipeline = resolve_pipeline(pipeline)
    if pipeline in CACHED_PIPELINES:
        return build_cached_bundle(train_index, test_index, recipe, pipeline=pipeline, resident=resident,
                                   resident_max_share=resident_max_share, **common)

    log.info("%d train / %d test images, %d classes, recipe %s at %d px (%d crop%s), reference pipeline",
             len(train_index), len(test_index), len(train_index.class_names), recipe.name, recipe.image_size,
             recipe.num_crops, "s" if recipe.num_crops > 1 else "")
    return build_bundle(
        train_set=ImageFileDataset(train_index, train_transform(recipe)),
        test_set=ImageFileDataset(test_index, eval_transform(recipe)),
        clean_train_set=ImageFileDataset(train_index, eval_transform(recipe)),
        num_crops=recipe.num_crops,
        pipeline="reference",
        **common,
    )
