"""The cached input pipelines: decode once, then augment on the training device (``dataset.pipeline``).

The reference pipeline (``dataset.pipeline=reference``, :mod:`adadf.data.transforms`) decodes every
JPEG every epoch and runs the whole recipe per image in PIL on the CPU. The two pipelines here read
a decoded uint8 cache instead:

- ``device`` (what ``auto`` picks on a CUDA device): the recipe **in its own order**, batched on the
  training device: resize to ``image_size`` -> RandAugment (:class:`BatchRandAugment`) -> flip ->
  normalise -> RandomErasing (:class:`ResizeAugmentNormalizeErase`). Nothing per image is left for
  a worker: with ``dataset.resident`` (the default) the loaders gather batches from the whole split
  held on the training device (:mod:`adadf.data.resident`), else DataLoader workers read the cache.
  Ten-crop (SFEW): the workers slice the ten crops out of the cached, already resized
  frame (a memory-map read, no arithmetic), the device runs RandAugment per crop, batched, then
  flip, normalise, erase.
- ``small_first`` (was ``fast``; never a default): RandAugment and the flip per image in PIL in the
  workers **on the small stored image, before the resize**; resize, normalise and erase batched on
  the device. Square-resize recipes only.

1. **Decoded image cache.** Every image of a split is decoded once (threads, tqdm progress bar) and
   stored as one uint8 ``.npy`` file under ``cache_dir("images")`` (:mod:`adadf.data.cache`:
   ``$ADADF_CACHE_DIR/images``, else ``~/.cache/adadf/images``). Square recipes: ``[N, S, S, 3]``,
   resized to ``S`` x ``S`` if it is not that size already (bilinear, aspect not kept: the recipe's
   own first step); ``S`` is the smaller of the recipe's resize and the first image's larger side
   (RAF-DB: its native 100 px, so the cache is lossless). Ten-crop: ``[N, H, W, 3]``, every image
   resized as the recipe's first step does (shorter side to ``resize``, PIL bilinear, exactly
   torchvision's ``Resize``) and stored at the top left of a frame as large as the largest one.
   The file name is a hash of the split's files (relative path, size, modification time), the
   resolved root and the stored geometry, so it is reused across epochs and runs and rebuilt when an
   image changes. Its SHA-256 is written atomically beside it (``<name>.sha256``) and checked
   whenever the cache is opened: a file whose bytes changed is rebuilt, with a warning naming it.
   It is memory-mapped: workers share the page cache (RAF-DB at 100 px is ~370 MB).
2. **Per batch, on the training device** (the trainer applies ``train_batch_transform``): see the
   two pipelines above. The resize is bilinear with antialiasing; on the CPU it is torch's uint8
   kernel (which follows Pillow's), on CUDA float, rounded to integers before RandAugment (as PIL's
   resize returns integers). RandomErasing draws torchvision's distribution (p, scale, ratio
   (0.3, 3.3), value 0, as in the reference) for the whole batch at once (:func:`erasing_boxes`),
   so the number of ops per batch is fixed; the flips, the RandAugment plan and the rectangles
   are drawn on the CPU and copied once each. Evaluation: resize + normalise.

``device``'s only differences from the reference recipe are sampling ones: the resize is torch's
antialiased bilinear (equal to PIL's to one grey level); geometric RandAugment ops always sample
bilinearly (timm picks bilinear or bicubic) through float32 ``grid_sample`` (a few pixels one grey
level off PIL's); and random streams differ (torch's global RNG, saved in checkpoints, instead of
the workers' Python/numpy RNGs), so a seed gives other augmentations than ``pipeline=reference``
with the same distribution.

What ``small_first`` changes on top (the recipe's order is resize -> RandAugment -> flip -> tensor
-> normalise -> erase):

- RandAugment runs **before** the resize, on the stored image. Flip commutes with the resize exactly;
  the colour ops (brightness, colour, contrast, solarize, posterize, invert, autocontrast, equalize)
  are per-pixel or per-image-histogram and give nearly the same image (PIL applies them to uint8
  pixels either way; the upsampling then interpolates the results instead of the inputs). The
  geometric ops (rotate, shear, relative translate) use the same angles and fractions; they resample
  the small image once and the resize resamples it again, so their output is a little softer than
  the reference's, where both resamplings happen at 224 px; the fill colour (``img_mean``) is the
  same. Sharpness's 3x3 kernel covers a larger part of the face at 100 px than at 224 px.
  ``translate_const`` (absolute translation, unused by the ``rand-`` ops, which translate by a
  fraction) is scaled by S / 224.
- Resize and normalise run on uint8 batches on the device: on the CPU the result is rounded to
  uint8 like PIL's resize; on CUDA it stays float (no rounding to integers).
- With a recipe size below an image's own size, the cache stores the image at the recipe's size (RAF-DB's
  100 px images are stored losslessly at every recipe size >= 100).
- Random streams differ (RandomErasing draws from the training process's torch RNG, not the
  workers'), so the same seed gives other augmentations than ``pipeline=reference``.
- Only square-resize recipes (``standard``: RAF-DB, AffectNet); ten-crop (SFEW) needs ``device``
  or ``reference``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache, partial
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms as T
from tqdm import tqdm

from adadf.atomic import atomic_path
from adadf.data.batch_randaugment import BatchRandAugment, OnDevice, ramp, to_device
from adadf.data.bundle import DataBundle, build_bundle
from adadf.data.cache import cache_dir, digest_problem, file_digest, write_digest
from adadf.data.cached import CachedImageDataset
from adadf.data.decode import image_size, load_rgb
from adadf.data.resident import resident_bundle
from adadf.data.index import ImageIndex
from adadf.data.transforms import Recipe, randaugment
from adadf.errors import UserError, first_line
from adadf.threads import torch_threads

log = logging.getLogger(__name__)

CACHE_FORMAT = 1  # bump when the cache layout or decoding changes
ERASING_RATIO = (0.3, 3.3)  # torchvision RandomErasing's default, as the reference uses it


# --------------------------------------------------------------------------------------------
# Decoded image cache
# --------------------------------------------------------------------------------------------
def native_size(index: ImageIndex) -> int:
    """The larger side of the split's first image (read from its header only)."""
    return max(image_size(index.absolute(0)))


def cache_key(index: ImageIndex, size: int, shorter_side: bool = False) -> str:
    """A hash of what the cached pixels depend on: root, every file's path/size/mtime, the geometry."""
    digest = hashlib.sha256()
    key = {"format": CACHE_FORMAT, "size": size, "root": str(Path(index.root).resolve())}
    if shorter_side:
        key["shorter_side"] = True
    digest.update(json.dumps(key).encode())
    for rel in index.paths:
        try:
            stat = os.stat(index.root / rel)
            digest.update(f"{rel}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{rel}\0missing\n".encode())
    return digest.hexdigest()[:20]


def _decode(path: Path, size: int) -> np.ndarray:
    image = load_rgb(path)
    if image.size != (size, size):
        image = image.resize((size, size), Image.BILINEAR)
    return np.asarray(image, dtype=np.uint8)  # [S, S, 3]


def shorter_side_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(h, w) of torchvision's ``Resize(size)`` (shorter side to ``size``, the longer one truncated)."""
    if width <= height:
        return int(size * height / width), size
    return size, int(size * width / height)


def image_sizes(index: ImageIndex) -> list[tuple[int, int]]:
    """(width, height) of every image of ``index``, from the headers."""
    return [image_size(index.absolute(i)) for i in range(len(index))]


def _decode_frame(path: Path, size: int, frame: tuple[int, int]) -> np.ndarray:
    """The image resized like ``T.Resize(size)`` (PIL bilinear), at the top left of a zero
    ``frame`` = (H, W): uint8 [H, W, 3]."""
    image = load_rgb(path)
    h, w = shorter_side_size(*image.size, size)
    image = T.Resize(size, interpolation=T.InterpolationMode.BILINEAR)(image)
    assert image.size == (w, h), (path, image.size, (w, h))
    out = np.zeros((*frame, 3), dtype=np.uint8)
    out[:h, :w] = np.asarray(image, dtype=np.uint8)
    return out


def cache_problem(path: Path, shape: tuple[int, ...]) -> str | None:
    """Why the cache file at ``path`` cannot be used (None: it can): unreadable, another shape, or
    content that no longer matches the digest written beside it (changed bytes, not only truncation)."""
    try:
        cached = np.load(path, mmap_mode="r")
        if cached.shape != shape or cached.dtype != np.uint8:
            return f"holds {cached.dtype} {cached.shape}, expected uint8 {shape}"
        del cached
    except (OSError, ValueError) as err:
        return f"unreadable ({first_line(err)})"
    return digest_problem(path)


def build_cache(index: ImageIndex, size: int, split: str = "train", threads: int | None = None,
                frame: tuple[int, int] | None = None) -> Path:
    """The uint8 ``[N, size, size, 3]`` .npy file of ``index``'s decoded images (built if missing,
    rebuilt if its content check fails), with its SHA-256 written atomically beside it.

    ``frame`` = (H, W): instead, every image resized with its shorter side to ``size`` (aspect kept,
    the ten-crop recipe's first step) at the top left of an ``[N, H, W, 3]`` frame."""
    root = cache_dir("images")
    geometry = f"{size}px" if frame is None else f"short{size}px-{frame[0]}x{frame[1]}"
    path = root / f"{split}-{len(index)}x{geometry}-{cache_key(index, size, frame is not None)}.npy"
    shape = (len(index), size, size, 3) if frame is None else (len(index), *frame, 3)
    if path.is_file():
        problem = cache_problem(path, shape)
        if problem is None:
            log.info("decoded %s images: %s", split, path)
            return path
        log.warning("image cache %s: %s; rebuilding it", path, problem)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"{root}: cannot create the image cache directory ({err.strerror}); "
                        "set ADADF_CACHE_DIR to a writable directory") from None
    start = time.perf_counter()
    with atomic_path(path) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        paths = [index.absolute(i) for i in range(len(index))]
        threads = threads or min(8, os.cpu_count() or 1)  # Pillow releases the GIL while decoding
        decode = partial(_decode, size=size) if frame is None else partial(_decode_frame, size=size, frame=frame)
        with ThreadPoolExecutor(max_workers=threads) as pool:
            decoded = pool.map(decode, paths, chunksize=32)
            for i, pixels in enumerate(tqdm(decoded, total=len(paths), desc=f"decoding {split} images",
                                            unit="img", leave=False, mininterval=1.0)):
                out[i] = pixels
        out.flush()
        del out
        digest = file_digest(tmp)
    write_digest(path, digest)
    log.info("decoded %d %s images to %d px in %.1f s: %s (%.0f MB)", len(index), split, size,
             time.perf_counter() - start, path, path.stat().st_size / 2**20)
    return path


def ten_crop_windows(height: int, width: int, crop: int) -> list[tuple[int, int, bool]]:
    """torchvision ``TenCrop(crop)``'s windows on an image of ``height`` x ``width``, in its order:
    (top, left, mirrored). The last five are ``five_crop`` of the mirrored image, i.e. the mirror of
    the crop at ``width - left - crop`` of the image itself."""
    centre = (int(round((height - crop) / 2.0)), int(round((width - crop) / 2.0)))
    five = [(0, 0), (0, width - crop), (height - crop, 0), (height - crop, width - crop), centre]
    return [(t, l, False) for t, l in five] + [(t, width - l - crop, True) for t, l in five]


class TenCropCachedDataset(CachedImageDataset):
    """Items ``(uint8 [10, 3, C, C], label)``: the ten crops of torchvision's ``TenCrop(C)`` sliced
    out of a frame cache (:func:`build_cache` with ``frame``); ``sizes[i]`` = (h, w) of image ``i``
    in its frame. Slicing only: equal to the reference's crops before the tensor conversion."""

    def __init__(self, path: Path, labels: list[int], sizes: list[tuple[int, int]], crop: int) -> None:
        super().__init__(path, labels)
        self.sizes = [tuple(map(int, hw)) for hw in sizes]
        self.crop = int(crop)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if self._pixels is None:
            self._pixels = np.load(self.path, mmap_mode="r")
        frame = self._pixels[i]  # [H, W, 3] view of the memory map
        c = self.crop
        out = np.empty((10, c, c, 3), dtype=np.uint8)
        for k, (top, left, mirrored) in enumerate(ten_crop_windows(*self.sizes[i], c)):
            window = frame[top:top + c, left:left + c]
            out[k] = window[:, ::-1] if mirrored else window
        return torch.from_numpy(out).permute(0, 3, 1, 2), self.labels[i]  # [10, 3, C, C]


# --------------------------------------------------------------------------------------------
# Augmentation: per image at the stored size, then per batch on the device
# --------------------------------------------------------------------------------------------
class SmallImageAugment:
    """The recipe's per-image steps that run before the tensor conversion: timm RandAugment
    (``adadf.data.transforms.randaugment``, translate_const scaled to the stored size) and the flip."""

    def __init__(self, recipe: Recipe, stored_size: int) -> None:
        scale = stored_size / recipe.resize
        scaled = dataclasses.replace(recipe, translate_const=max(1, round(recipe.translate_const * scale)))
        steps: list[Callable] = []
        if recipe.randaugment:
            steps.append(randaugment(scaled))
        if recipe.flip_p > 0:
            steps.append(T.RandomHorizontalFlip(recipe.flip_p))
        self.transform = T.Compose(steps)

    def __call__(self, image: Image.Image) -> Image.Image:
        return self.transform(image)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.transform})"


def one_cpu_thread(device: torch.device) -> contextlib.AbstractContextManager:
    """On the CPU, run the enclosed batch ops on one thread: they are memory-bound, and a second
    intra-op thread mostly spins while the DataLoader workers need the cores (measured on 2 cores:
    ~2.5x less CPU time per image). A no-op on other devices."""
    return torch_threads(1 if device.type == "cpu" else None)


class ResizeNormalize:
    """uint8 ``[N, 3, s, s]`` on any device -> float32 ``[N, 3, S, S]``, resized and normalised."""

    def __init__(self, size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.size = int(size)
        self.mean = tuple(float(m) * 255.0 for m in mean)
        self.inv_std = tuple(1.0 / (float(s) * 255.0) for s in std)
        # copied to the device once (a copy per batch would be host work, or a wait)
        self._mean, self._inv_std = (OnDevice(torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1))
                                     for v in (self.mean, self.inv_std))

    def resize(self, images: torch.Tensor) -> torch.Tensor:
        if tuple(images.shape[-2:]) == (self.size, self.size):
            return images
        if images.device.type == "cpu":  # uint8 in, uint8 out: torch's fast Pillow-style kernel
            images = images.contiguous(memory_format=torch.channels_last)
        else:
            images = images.float()
        return F.interpolate(images, size=(self.size, self.size), mode="bilinear", align_corners=False,
                             antialias=True)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        n, c, h, w = images.shape
        out = torch.empty((n, c, h, w), dtype=torch.float32, device=images.device)  # NCHW, as the reference
        out.copy_(images)
        return out.sub_(self._mean(images.device)).mul_(self._inv_std(images.device))

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        with one_cpu_thread(images.device):
            return self.normalize(self.resize(images))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size})"


@lru_cache(maxsize=16)
def _size(height: int, width: int) -> torch.Tensor:
    """(height, width) as a float64 CPU tensor [2], made once per image size."""
    return torch.tensor([height, width], dtype=torch.float64)


def erasing_boxes(n: int, height: int, width: int, p: float, scale: tuple[float, float],
                  ratio: tuple[float, float] = ERASING_RATIO, attempts: int = 10) -> torch.Tensor:
    """RandomErasing's rectangles for ``n`` images, drawn for the whole batch at once from torch's
    global CPU RNG: float32 [n, 4] = (top, left, bottom, right), empty for an image left alone.

    torchvision's distribution (``RandomErasing.forward`` + ``get_params``): a ``p`` coin; then up
    to ``attempts`` tries of an area fraction ~ U(scale) and a log aspect ratio ~ U(log ratio),
    the first whose rounded h, w fit inside the image wins (none: no rectangle); its corner is
    uniform over the positions that fit. torchvision draws image by image and try by try (a
    data-dependent number of draws); here every try is drawn up front, so the same seed gives other
    rectangles than torchvision's, with the same distribution, in a fixed number of ops."""
    draws = torch.rand(n, 3 + 2 * attempts, dtype=torch.float64)  # coin, corner (2), tries
    size = _size(height, width)
    tries = draws[:, 3:].view(n, 2, attempts)
    area = height * width * (scale[0] + (scale[1] - scale[0]) * tries[:, 0])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * tries[:, 1])
    hw = torch.round(torch.sqrt(torch.stack((area * aspect, area / aspect), 1)))  # [n, (h, w), attempts]
    fits = (hw < size.view(1, 2, 1)).all(1)
    first = fits.to(torch.uint8).argmax(1).view(n, 1, 1).expand(n, 2, 1)  # the first try that fits
    erased = (draws[:, :1] < p) & fits.any(1, keepdim=True)
    hw = hw.gather(2, first).view(n, 2) * erased
    corner = torch.floor(draws[:, 1:3] * (size - hw + 1))
    return torch.cat((corner, corner + hw), 1).to(torch.float32)


def erase_boxes(images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Zero every image's rectangle (``boxes`` [N, 4] on the images' device, as from
    :func:`erasing_boxes`) in place, all channels, with one mask for the batch."""
    h, w = images.shape[-2:]
    top, left, bottom, right = boxes.view(-1, 4, 1, 1, 1).unbind(1)
    rows = ramp(h, torch.float32, images.device, (1, 1, h, 1))
    cols = ramp(w, torch.float32, images.device, (1, 1, 1, w))
    return images.masked_fill_((rows >= top) & (rows < bottom) & (cols >= left) & (cols < right), 0.0)


class ResizeNormalizeErase(ResizeNormalize):
    """``ResizeNormalize`` then RandomErasing (torchvision's distribution, :func:`erasing_boxes`; value 0)."""

    def __init__(self, size: int, mean: tuple[float, ...], std: tuple[float, ...], erasing_p: float,
                 erasing_scale: tuple[float, float], erasing_ratio: tuple[float, float] = ERASING_RATIO) -> None:
        super().__init__(size, mean, std)
        self.erasing_p = float(erasing_p)
        self.erasing_scale = tuple(erasing_scale)
        self.erasing_ratio = tuple(erasing_ratio)

    def erase(self, images: torch.Tensor) -> torch.Tensor:
        """In place; the rectangles are drawn on the CPU (torch's global RNG) and copied once."""
        if self.erasing_p <= 0:
            return images
        boxes = erasing_boxes(images.shape[0], *images.shape[-2:], self.erasing_p, self.erasing_scale,
                              self.erasing_ratio)
        return erase_boxes(images, to_device(boxes, images.device))

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        with one_cpu_thread(images.device):
            return self.erase(self.normalize(self.resize(images)))

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(size={self.size}, erasing_p={self.erasing_p}, "
                f"scale={self.erasing_scale}, ratio={self.erasing_ratio})")


class ResizeAugmentNormalizeErase(ResizeNormalizeErase):
    """``dataset.pipeline=device``: the recipe in its own order, batched on the device: resize to
    ``size`` (rounded to integers, as PIL's resize returns them) -> RandAugment
    (:class:`BatchRandAugment`) -> flip -> normalise -> RandomErasing. Draws from torch's global
    RNG (saved in checkpoints). uint8 ``[N, 3, s, s]`` -> float32 ``[N, 3, size, size]``."""

    def __init__(self, augment: BatchRandAugment | None, flip_p: float, size: int, mean: tuple[float, ...],
                 std: tuple[float, ...], erasing_p: float, erasing_scale: tuple[float, float]) -> None:
        super().__init__(size, mean, std, erasing_p, erasing_scale)
        self.augment = augment
        self.flip_p = float(flip_p)

    def resize_to_integers(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 -> resized, integer-valued (uint8 on the CPU, rounded float on other devices)."""
        resized = self.resize(images)
        if resized.dtype != torch.uint8:
            resized = resized.round_().clamp_(0, 255)
        return resized.contiguous()

    def flip(self, images: torch.Tensor) -> torch.Tensor:
        if self.flip_p <= 0:
            return images
        mirrored = to_device(torch.rand(images.shape[0]) < self.flip_p, images.device)
        return torch.where(mirrored.view(-1, 1, 1, 1), images.flip(-1), images)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        with one_cpu_thread(images.device):
            images = self.resize_to_integers(images)  # [N, 3, S, S]
            if self.augment is not None:
                images = self.augment(images)  # uint8
            return self.erase(self.normalize(self.flip(images)))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(resize -> {self.augment} -> flip_p={self.flip_p} -> {super().__repr__()})"


# --------------------------------------------------------------------------------------------
# Builder (called by adadf.data.images.build_image_bundle for dataset.pipeline=device|small_first)
# --------------------------------------------------------------------------------------------
CACHED_PIPELINES = ("device", "small_first")


def device_train_transform(recipe: Recipe) -> ResizeAugmentNormalizeErase:
    """The recipe's training steps as one batch transform (``pipeline=device``), in the recipe's
    order. Geometric ops use float32 ``grid_sample``: a few pixels one grey level off PIL's, much
    faster than exact."""
    augment = None
    if recipe.randaugment:
        augment = BatchRandAugment.from_config(recipe.randaugment, img_mean=tuple(recipe.img_mean),
                                               min_posterize_bits=recipe.min_posterize_bits, exact_geometry=False)
    return ResizeAugmentNormalizeErase(augment, recipe.flip_p, recipe.image_size, recipe.mean, recipe.std,
                                       recipe.erasing_p, recipe.erasing_scale)


def _ten_crop_sets(train_index: ImageIndex, test_index: ImageIndex, recipe: Recipe
                   ) -> tuple[TenCropCachedDataset, TenCropCachedDataset]:
    """Frame caches of both splits (shorter side resized to the recipe's) and their crop datasets."""
    sets = []
    for index, split in ((train_index, "train"), (test_index, "test")):
        sizes = [shorter_side_size(w, h, recipe.resize) for w, h in image_sizes(index)]
        frame = (max(h for h, _ in sizes), max(w for _, w in sizes))
        path = build_cache(index, recipe.resize, split, frame=frame)
        sets.append(TenCropCachedDataset(path, list(index.labels), sizes, recipe.image_size))
    return sets[0], sets[1]


def build_cached_bundle(
    train_index: ImageIndex,
    test_index: ImageIndex,
    recipe: Recipe,
    *,
    pipeline: str,
    resident: bool = False,
    resident_max_share: float = 0.5,
    **common: Any,
) -> DataBundle:
    """Loaders over the decoded caches, the recipe's augmentation as batch transforms on the
    training device (see the module docstring); ``common`` is what
    :func:`adadf.data.bundle.build_bundle` takes besides the datasets.

    ``pipeline="device"``: the workers only read the cache (and slice ten crops), the whole recipe
    runs batched on the device in its order. ``"small_first"``: RandAugment and the flip per image
    in PIL in the workers at the stored size, before the device's resize. Evaluation loaders read
    the memory map in the training process (no per-image work to share). ``resident``
    (``dataset.resident``, ``device`` only, not ten-crop): the square caches' loaders are
    :class:`adadf.data.resident.ResidentLoader` s (no workers; placed on the training device by
    :func:`adadf.app.build_data` when the set takes at most ``resident_max_share`` of its free memory).
    """
    if pipeline not in CACHED_PIPELINES:
        raise ValueError(f"pipeline={pipeline!r}: expected one of {CACHED_PIPELINES}")
    eval_transform = ResizeNormalize(recipe.image_size, recipe.mean, recipe.std)
    if recipe.ten_crop:
        if pipeline != "device" or recipe.resize_mode != "shorter":
            raise UserError(f"dataset.pipeline={pipeline}: supports square-resize recipes (standard), not "
                            f"{recipe.name}; use dataset.pipeline=device or reference")
        train_set, test_set = _ten_crop_sets(train_index, test_index, recipe)
        log.info("%d train / %d test images, %d classes, recipe %s at %d px (10 crops), device pipeline "
                 "(resized to %d px shorter side once, crops sliced in the workers)", len(train_index),
                 len(test_index), len(train_index.class_names), recipe.name, recipe.image_size, recipe.resize)
        return build_bundle(train_set=train_set, clean_train_set=train_set, test_set=test_set, eval_workers=0,
                            num_crops=10, train_batch_transform=device_train_transform(recipe),
                            eval_batch_transform=eval_transform, pipeline=pipeline, **common)
    if recipe.resize_mode != "square" or recipe.resize != recipe.image_size:
        raise UserError(f"dataset.pipeline={pipeline}: supports square-resize recipes (standard), not {recipe.name}; "
                        "use dataset.pipeline=reference")
    size = min(recipe.resize, native_size(train_index))
    train_path = build_cache(train_index, size, "train")
    test_path = build_cache(test_index, size, "test")
    log.info("%d train / %d test images, %d classes, recipe %s at %d px (1 crop), %s pipeline (decoded at %d px)",
             len(train_index), len(test_index), len(train_index.class_names), recipe.name, recipe.image_size,
             pipeline, size)
    labels = list(train_index.labels)
    on_device = pipeline == "device"
    bundle = build_bundle(
        train_set=CachedImageDataset(train_path, labels, None if on_device else SmallImageAugment(recipe, size)),
        clean_train_set=CachedImageDataset(train_path, labels),
        test_set=CachedImageDataset(test_path, list(test_index.labels)),
        eval_workers=0,
        train_batch_transform=device_train_transform(recipe) if on_device else ResizeNormalizeErase(
            recipe.image_size, recipe.mean, recipe.std, recipe.erasing_p, recipe.erasing_scale),
        eval_batch_transform=eval_transform,
        pipeline=pipeline,
        **common,
    )
    return resident_bundle(bundle, resident_max_share) if on_device and resident else bundle


__all__ = [
    "CACHED_PIPELINES", "CachedImageDataset", "ResizeAugmentNormalizeErase", "ResizeNormalize",
    "ResizeNormalizeErase", "SmallImageAugment", "TenCropCachedDataset", "build_cache", "build_cached_bundle",
    "cache_key", "device_train_transform", "erase_boxes", "erasing_boxes", "ten_crop_windows",
]
