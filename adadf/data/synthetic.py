"""The built-in synthetic expression dataset: procedurally drawn faces, nothing to download.

Each class is a vector of expression parameters (mouth curvature / openness / width, teeth, eye
openness, brow height / tilt, nose wrinkle, forehead lines); each sample draws its own intensity and
jitter around its class, plus nuisance variation (position, scale, rotation, skin tone, hair,
background clutter, lighting, noise). One knob mimics real FER data:

- ``ambiguity``: with this probability a sample's parameters are blended with another class
  (weight ``w`` in [0.2, 0.5]); its true label distribution ``[1 - w, w]`` is stored as a soft label.
- label noise is not the data's own: ``dataset.label_noise`` flips training labels for every
  dataset the same way (:mod:`adadf.data.noise`).

Images are rendered at twice the size with Pillow and box-downsampled (anti-aliasing), stored as
uint8 ``[N, 3, H, W]`` and cached on disk (``adadf.data.cache.cache_dir("synthetic")``); augmentation and normalisation run batched on the
training device (``TrainBatchTransform`` / ``EvalBatchTransform``).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

from adadf.atomic import atomic_path
from adadf.data.bundle import DataBundle, build_bundle
from adadf.data.cache import cache_dir as adadf_cache_dir
from adadf.data.cache import digest_problem, file_digest, write_digest
from adadf.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from adadf.errors import first_line

log = logging.getLogger(__name__)

CLASS_NAMES = ["Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral"]
NUM_CLASSES = len(CLASS_NAMES)
FORMAT_VERSION = 2  # bump whenever the renderer changes, so stale caches are not reused

# Expression parameters per class (rows in CLASS_NAMES order). Columns:
#   mouth_curve (-1 frown .. 1 smile), mouth_open (0..1), mouth_width, teeth (0..1),
#   mouth_tilt (one-sided sneer), eye_open, brow_height (-1 low .. 1 high),
#   brow_tilt (-1 inner ends down, angry .. 1 inner ends up, sad), nose_wrinkle, forehead_lines
PARAM_NAMES = [
    "mouth_curve", "mouth_open", "mouth_width", "teeth", "mouth_tilt",
    "eye_open", "brow_height", "brow_tilt", "nose_wrinkle", "forehead_lines",
]
CLASS_PARAMS = np.array(
    [
        # curve  open  width teeth tilt  eye   browh browt wrink fore
        [0.00, 1.00, 0.55, 0.00, 0.00, 1.40, 1.00, 0.10, 0.00, 1.00],  # Surprise
        [-0.40, 0.50, 1.15, 0.70, 0.00, 1.30, 0.55, 0.90, 0.00, 0.60],  # Fear
        [-0.50, 0.20, 0.80, 0.50, 0.90, 0.45, -0.50, -0.30, 1.00, 0.00],  # Disgust
        [1.00, 0.45, 1.15, 1.00, 0.00, 0.55, 0.15, 0.00, 0.00, 0.00],  # Happiness
        [-0.95, 0.00, 0.80, 0.00, 0.00, 0.60, -0.10, 1.00, 0.00, 0.20],  # Sadness
        [-0.25, 0.22, 0.85, 1.00, 0.00, 0.75, -0.95, -1.00, 0.40, 0.00],  # Anger
        [0.00, 0.00, 0.85, 0.00, 0.00, 0.95, 0.00, 0.00, 0.00, 0.00],  # Neutral
    ],
    dtype=np.float64,
)
_NEUTRAL = CLASS_PARAMS[CLASS_NAMES.index("Neutral")]
# Per-sample jitter (standard deviation) of each parameter: within-class variation.
_PARAM_JITTER = np.array([0.10, 0.06, 0.07, 0.10, 0.10, 0.08, 0.10, 0.12, 0.10, 0.10])
_PARAM_MIN = np.array([-1.2, 0.0, 0.45, 0.0, -1.2, 0.25, -1.2, -1.2, 0.0, 0.0])
_PARAM_MAX = np.array([1.2, 1.1, 1.30, 1.0, 1.2, 1.55, 1.2, 1.2, 1.0, 1.0])

_SKIN = np.array([[245, 214, 186], [224, 172, 132], [190, 128, 88], [141, 85, 52], [92, 56, 36]], float)
_HAIR = np.array([[25, 20, 18], [60, 40, 25], [110, 70, 35], [200, 160, 90], [140, 140, 140]], float)
_IRIS = np.array([[60, 40, 25], [40, 90, 140], [70, 110, 60], [30, 25, 20]], float)


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------
def _rgb(c: np.ndarray) -> tuple[int, int, int]:
    c = np.clip(c, 0, 255)
    return int(c[0]), int(c[1]), int(c[2])


def _mix(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    return a * (1.0 - t) + b * t


def _palette(table: np.ndarray, t: float) -> np.ndarray:
    """Interpolate along the rows of ``table`` with ``t`` in [0, 1]."""
    x = t * (len(table) - 1)
    i = min(int(x), len(table) - 2)
    return _mix(table[i], table[i + 1], x - i)


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    """A 2x2 colour field stretched to a smooth gradient, plus a few clutter shapes."""
    corners = rng.uniform(30, 230, size=(2, 2, 3)) * rng.uniform(0.5, 1.0)
    corners += rng.uniform(0, 60)
    img = Image.fromarray(np.clip(corners, 0, 255).astype(np.uint8)).resize((size, size), Image.BILINEAR)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(0, 4))):
        x0, y0 = rng.uniform(-0.2, 1.0, 2) * size
        w, h = rng.uniform(0.1, 0.5, 2) * size
        color = _rgb(rng.uniform(20, 240, 3))
        if rng.random() < 0.5:
            draw.rectangle((x0, y0, x0 + w, y0 + h), fill=color)
        else:
            draw.ellipse((x0, y0, x0 + w, y0 + h), fill=color)
    return img


def _face_layer(rng: np.random.Generator, p: np.ndarray, size: int) -> Image.Image:
    """Draw one face with expression parameters ``p`` on a transparent RGBA layer."""
    (curve, mouth_open, mouth_width, teeth, mouth_tilt,
     eye_open, brow_height, brow_tilt, wrinkle, forehead) = p
    layer = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)

    scale = rng.uniform(0.82, 1.04)
    a = 0.33 * size * scale  # face half-width
    b = a * rng.uniform(1.15, 1.3)  # face half-height
    cx = size / 2 + rng.uniform(-0.07, 0.07) * size
    cy = size / 2 + rng.uniform(-0.06, 0.06) * size

    def pt(u: float, v: float) -> tuple[float, float]:
        """Face coordinates (u, v in about [-1, 1], v downwards) to pixels."""
        return cx + u * a, cy + v * b

    def box(u: float, v: float, ru: float, rv: float) -> tuple[float, float, float, float]:
        return cx + (u - ru) * a, cy + (v - rv) * b, cx + (u + ru) * a, cy + (v + rv) * b

    skin = _palette(_SKIN, rng.random()) * rng.uniform(0.9, 1.05)
    dark = skin * 0.45
    line_w = max(1, round(0.09 * a))

    # Hair behind the face, ears, face.
    if rng.random() < 0.75:
        hair = _rgb(_palette(_HAIR, rng.random()))
        d.ellipse(box(0, -0.12 - rng.uniform(0, 0.08), 1.1, 1.0), fill=hair)
    d.ellipse(box(-0.98, 0.0, 0.14, 0.2), fill=_rgb(skin * 0.95))
    d.ellipse(box(0.98, 0.0, 0.14, 0.2), fill=_rgb(skin * 0.95))
    d.ellipse(box(0, 0, 1.0, 1.0), fill=_rgb(skin), outline=_rgb(skin * 0.8), width=max(1, line_w // 2))

    # Forehead lines (surprise, fear).
    if forehead > 0.05:
        col = _rgb(_mix(skin, dark, min(1.0, forehead) * 0.8))
        for k in range(3):
            v = -0.72 + 0.09 * k
            d.arc(box(0, v + 0.25, 0.4, 0.25), 215, 325, fill=col, width=max(1, line_w // 2 + 1))

    # Eyes: white ellipse with an iris, height set by eye_open.
    iris = _rgb(_palette(_IRIS, rng.random()))
    ew, eh = 0.19, 0.085 * max(eye_open, 0.2)
    for side in (-1, 1):
        u, v = side * 0.37, -0.1
        d.ellipse(box(u, v, ew, eh), fill=(245, 245, 240), outline=_rgb(dark), width=max(1, line_w // 2))
        r = min(0.09, eh * b / a * 0.95)
        ry = r * a / b
        d.ellipse(box(u, v, r, ry), fill=iris)
        d.ellipse(box(u, v, r * 0.45, ry * 0.45), fill=(10, 10, 10))
        # Thick upper lid, which squints the eye in happiness / disgust.
        d.arc(box(u, v, ew, eh), 190, 350, fill=_rgb(dark), width=line_w)

    # Brows: height and tilt (inner ends up for sad / fear, down for anger).
    brow_col = _rgb(_mix(_palette(_HAIR, rng.random()), dark, 0.3))
    v_base = -0.33 - 0.14 * brow_height
    for side in (-1, 1):
        inner = pt(side * 0.15, v_base - 0.12 * brow_tilt)
        mid = pt(side * 0.36, v_base - 0.03 - 0.02 * brow_tilt)
        outer = pt(side * 0.58, v_base + 0.03 + 0.04 * brow_tilt)
        d.line([inner, mid, outer], fill=brow_col, width=int(line_w * 2.0), joint="curve")
    if brow_tilt < -0.3:  # frown lines between the brows
        col = _rgb(_mix(skin, dark, min(1.0, -brow_tilt - 0.3)))
        for side in (-1, 1):
            d.line([pt(side * 0.05, v_base - 0.05), pt(side * 0.07, v_base + 0.1)], fill=col, width=line_w)

    # Nose, with wrinkles across the bridge and nasolabial folds (disgust).
    d.line([pt(0.0, -0.02), pt(-0.04, 0.22), pt(0.04, 0.25)], fill=_rgb(skin * 0.7), width=line_w)
    if wrinkle > 0.05:
        col = _rgb(_mix(skin, dark, min(1.0, wrinkle)))
        for k in range(2):
            d.line([pt(-0.09, 0.0 + 0.06 * k), pt(0.09, 0.0 + 0.06 * k)], fill=col, width=line_w)
        for side in (-1, 1):
            d.line([pt(side * 0.16, 0.2), pt(side * 0.3, 0.45)], fill=col, width=line_w)

    # Mouth: a midline bent by curve and tilt, opened into a lens shape by mouth_open.
    t = np.linspace(-1.0, 1.0, 17)
    half_w = 0.34 * mouth_width
    sneer = mouth_tilt * (1 if rng.random() < 0.5 else -1)
    v0 = 0.52 + rng.uniform(-0.03, 0.03)
    mid = v0 - curve * 0.2 * t**2 - sneer * 0.07 * t + 0.04 * max(curve, 0) - 0.03 * min(curve, 0)
    profile = np.clip(1.0 - t**2, 0.0, None) ** 0.6
    upper = mid - mouth_open * 0.11 * profile
    lower = mid + mouth_open * 0.22 * profile
    lip = _rgb(_mix(skin, np.array([150.0, 40.0, 50.0]), 0.6) * 0.8)
    xs = t * half_w
    if mouth_open > 0.04:
        poly = [pt(x, y) for x, y in zip(xs, upper)] + [pt(x, y) for x, y in zip(xs[::-1], lower[::-1])]
        d.polygon(poly, fill=(60, 15, 20))
        if teeth > 0.1:
            band = upper + (lower - upper) * 0.45 * min(teeth, 1.0)
            tpoly = [pt(x, y) for x, y in zip(xs, upper)] + [pt(x, y) for x, y in zip(xs[::-1], band[::-1])]
            d.polygon(tpoly, fill=(240, 240, 230))
        d.line([pt(x, y) for x, y in zip(xs, upper)], fill=lip, width=line_w, joint="curve")
        d.line([pt(x, y) for x, y in zip(xs, lower)], fill=lip, width=line_w, joint="curve")
    else:
        d.line([pt(x, y) for x, y in zip(xs, mid)], fill=lip, width=int(line_w * 1.3), joint="curve")

    angle = rng.uniform(-12, 12)
    # Nearest is 15x faster than bilinear here; the 2x box downsample smooths the edges anyway.
    return layer.rotate(angle, resample=Image.NEAREST, center=(cx, cy))


def _render(rng: np.random.Generator, params: np.ndarray, image_size: int) -> np.ndarray:
    """One image, uint8 [H, W, 3]: draw at 2x, box-downsample, then lighting and noise."""
    big = 2 * image_size
    img = _background(rng, big).convert("RGBA")
    img.alpha_composite(_face_layer(rng, params, big))
    small = np.asarray(img.convert("RGB").reduce(2), dtype=np.float32)  # [H, W, 3]

    # Directional lighting, global brightness and colour cast, sensor noise.
    theta = rng.uniform(0, 2 * math.pi)
    ramp = np.linspace(-1.0, 1.0, image_size, dtype=np.float32)
    grad = math.cos(theta) * ramp[None, :] + math.sin(theta) * ramp[:, None]  # [H, W]
    gain = rng.uniform(0.7, 1.15) * (1.0 + rng.uniform(0.0, 0.35) * grad)
    cast = rng.uniform(0.9, 1.1, size=3).astype(np.float32)
    out = small * gain[:, :, None] * cast
    out += rng.normal(0.0, rng.uniform(2.0, 10.0), size=out.shape).astype(np.float32)
    return np.clip(out, 0, 255).astype(np.uint8)


def _make_split(
    rng: np.random.Generator, n: int, image_size: int, ambiguity: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Balanced labels, blended expression parameters and rendered images for ``n`` samples."""
    labels = rng.permutation(np.arange(n) % NUM_CLASSES)
    ambiguous = rng.random(n) < ambiguity
    other = (labels + rng.integers(1, NUM_CLASSES, size=n)) % NUM_CLASSES
    weight = np.where(ambiguous, rng.uniform(0.2, 0.5, size=n), 0.0)
    soft = np.zeros((n, NUM_CLASSES), dtype=np.float32)
    soft[np.arange(n), labels] = 1.0 - weight
    soft[np.arange(n), other] += weight

    target = (1.0 - weight)[:, None] * CLASS_PARAMS[labels] + weight[:, None] * CLASS_PARAMS[other]
    intensity = rng.uniform(0.7, 1.1, size=(n, 1))
    params = _NEUTRAL + intensity * (target - _NEUTRAL)
    params += rng.normal(size=params.shape) * _PARAM_JITTER
    params = np.clip(params, _PARAM_MIN, _PARAM_MAX)

    images = np.empty((n, image_size, image_size, 3), dtype=np.uint8)
    for i in range(n):
        images[i] = _render(rng, params[i], image_size)
    return (
        torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),  # [N, 3, H, W] uint8
        torch.from_numpy(labels.astype(np.int64)),
        torch.from_numpy(soft),
    )


def generate_synthetic(
    train_size: int,
    test_size: int,
    image_size: int = 64,
    ambiguity: float = 0.0,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Render the train and test splits; deterministic from ``seed``.

    Returns ``train_images`` / ``test_images`` uint8 [N, 3, H, W], ``train_labels`` /
    ``test_labels`` int64 [N] (the stated classes), and ``train_soft_labels`` /
    ``test_soft_labels`` float32 [N, C] (the true label distribution of each sample).
    The test split has its own random stream, so it does not change with ``train_size``.
    """
    train_rng = np.random.default_rng([seed, 0])
    test_rng = np.random.default_rng([seed, 1])
    train_images, train_labels, train_soft = _make_split(train_rng, train_size, image_size, ambiguity)
    test_images, test_labels, test_soft = _make_split(test_rng, test_size, image_size, ambiguity)
    return {
        "train_images": train_images,
        "train_labels": train_labels,
        "train_soft_labels": train_soft,
        "test_images": test_images,
        "test_labels": test_labels,
        "test_soft_labels": test_soft,
    }


# --------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------
def cache_path(cache_dir: str | os.PathLike | None, **params) -> Path:
    """Where the data for ``params`` is cached: named by a hash of the params and format version.
    ``cache_dir`` None: ``adadf.data.cache.cache_dir("synthetic")``."""
    root = adadf_cache_dir("synthetic") if cache_dir is None else Path(cache_dir).expanduser()
    key = json.dumps({"format": FORMAT_VERSION, **params}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return root / f"synthetic-v{FORMAT_VERSION}-{digest}.pt"


def load_or_generate(cache_dir: str | os.PathLike | None = None, **params) -> dict[str, torch.Tensor]:
    """Load the cached dataset for ``params`` (``generate_synthetic``'s arguments) or generate it.

    The file is written atomically (:func:`adadf.atomic.atomic_path`) with its SHA-256 beside it, as
    the image caches are; a file that is unreadable or whose bytes changed (zeroed, flipped: torch's
    reader misses those) is regenerated with a warning.
    """
    path = cache_path(cache_dir, **params)
    if path.exists():
        problem = digest_problem(path)
        if problem is None:
            try:
                data = torch.load(path, map_location="cpu", weights_only=True)
                log.debug("loaded synthetic dataset from %s", path)
                return data
            except Exception as err:  # noqa: BLE001 - any broken cache file is simply regenerated
                problem = f"unreadable ({first_line(err)})"
        log.warning("synthetic data cache %s: %s; regenerating it", path, problem)

    start = time.perf_counter()
    data = generate_synthetic(**params)
    log.info(
        "generated synthetic dataset (%d train + %d test images, %d px) in %.1f s",
        len(data["train_labels"]), len(data["test_labels"]), data["train_images"].shape[-1],
        time.perf_counter() - start,
    )
    try:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                torch.save(data, f)
                f.flush()
                os.fsync(f.fileno())
            digest = file_digest(tmp)
        write_digest(path, digest)
        log.info("cached synthetic dataset at %s", path)
    except (OSError, RuntimeError) as err:  # RuntimeError: torch's writer on a full disk
        log.warning("cannot cache synthetic dataset at %s (%s); continuing without a cache", path, err)
    return data


# --------------------------------------------------------------------------------------------
# Dataset and batched transforms
# --------------------------------------------------------------------------------------------
class UInt8ImageDataset(Dataset):
    """In-memory uint8 images ``[N, 3, H, W]`` with int labels ``[N]``; no per-sample transform."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4 or len(images) != len(labels):
            raise ValueError(f"expected uint8 [N, 3, H, W] images and N labels, got {tuple(images.shape)} "
                             f"{images.dtype} and {len(labels)} labels")
        self.images = images
        self.labels = labels.long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])


def normalize_uint8(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B, 3, H, W] on any device -> float32 normalised with the ImageNet mean / std."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


class EvalBatchTransform:
    """Normalise only."""

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return normalize_uint8(images)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class TrainBatchTransform:
    """Per-sample random horizontal flip and translation / scale jitter, then normalise.

    Runs on whatever device the batch is on, drawing from the global torch RNG (so seeding torch
    makes it deterministic). ``max_translate`` is a fraction of the image size.
    """

    def __init__(self, flip: bool = True, max_translate: float = 0.08, scale: tuple[float, float] = (0.92, 1.08)):
        self.flip = flip
        self.max_translate = float(max_translate)
        self.scale = (float(scale[0]), float(scale[1]))

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = normalize_uint8(images)  # [B, 3, H, W]
        b, device = x.shape[0], x.device
        if self.flip:
            mirrored = torch.rand(b, device=device) < 0.5
            x = torch.where(mirrored.view(b, 1, 1, 1), x.flip(-1), x)
        if self.max_translate > 0 or self.scale != (1.0, 1.0):
            lo, hi = self.scale
            zoom = lo + (hi - lo) * torch.rand(b, device=device)  # > 1 zooms in
            shift = (torch.rand(b, 2, device=device) * 2 - 1) * (2 * self.max_translate)  # grid units
            theta = torch.zeros(b, 2, 3, device=device)
            theta[:, 0, 0] = 1.0 / zoom
            theta[:, 1, 1] = 1.0 / zoom
            theta[:, :, 2] = shift
            grid = F.affine_grid(theta, list(x.shape), align_corners=False)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        return x

    def __repr__(self) -> str:
        return f"{type(self).__name__}(flip={self.flip}, max_translate={self.max_translate}, scale={self.scale})"


# --------------------------------------------------------------------------------------------
# Builder (Hydra _target_ of adadf/conf/dataset/synthetic.yaml)
# --------------------------------------------------------------------------------------------
def build_synthetic(
    *,
    root: str | None,
    num_classes: int,
    batch_size: int,
    num_workers: int,
    image_size: int,
    train_size: int,
    test_size: int,
    ambiguity: float,
    seed: int,
    val_fraction: float,
    label_noise: float,
    noise_seed: int | None,
    loader_seed: int,
) -> DataBundle:
    """The synthetic dataset's loaders (uint8 images) and batch transforms.

    Values are checked by the schema (:class:`adadf.config.dataset.SyntheticConfig`). ``root`` is
    the cache directory (None: ``adadf.data.cache.cache_dir("synthetic")``); ``seed`` fixes the
    data, ``loader_seed`` the shuffling order. ``num_classes`` is always 7 (the schema says so).
    """
    cache_dir = None if root is None else Path(root).expanduser().resolve()
    data = load_or_generate(
        cache_dir,
        train_size=int(train_size),
        test_size=int(test_size),
        image_size=int(image_size),
        ambiguity=float(ambiguity),
        seed=int(seed),
    )
    train_set = UInt8ImageDataset(data["train_images"], data["train_labels"])
    test_set = UInt8ImageDataset(data["test_images"], data["test_labels"])
    return build_bundle(  # val_fraction > 0: a stratified validation split of the training set
        train_set=train_set, test_set=test_set, clean_train_set=train_set,
        train_labels=data["train_labels"].tolist(), class_names=list(CLASS_NAMES),
        train_paths=[f"synthetic/train/{i:06d}" for i in range(len(train_set))],
        batch_size=batch_size, num_workers=num_workers, loader_seed=loader_seed,
        val_fraction=val_fraction, label_noise=label_noise, noise_seed=noise_seed,
        train_batch_transform=TrainBatchTransform(), eval_batch_transform=EvalBatchTransform(),
    )
