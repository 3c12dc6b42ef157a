"""timm's RandAugment (``rand-mM-nN-mstdS``, the ``_RAND_TRANSFORMS`` op set) on whole uint8 batches.

The reference pipeline runs :func:`timm.data.auto_augment.rand_augment_transform` per image in PIL on
the CPU. :class:`BatchRandAugment` does the same on a ``[B, 3, H, W]`` uint8 batch with plain torch
ops, on whatever device the batch lives on (CPU or CUDA): no PIL and no Python loop over images.

How a batch runs, and why: on a GPU a small augmentation costs the host's work of launching its
kernels, not the arithmetic, so a batch runs a **fixed sequence of torch ops**: the same whatever
the batch size and whichever image drew which op, and none reads a device value back (no
``.item()``, ``nonzero``, ``bool(tensor)`` or shape from device data): the host never waits.

1. Every random draw is made up front on the CPU (from the caller's ``torch.Generator`` or torch's
   global RNG) into a :class:`Plan`; from it, still on the CPU and vectorised,
   :meth:`BatchRandAugment.layout` makes one row per image and slot (the op's argument by timm's
   level mapping, its affine matrix) and sorts each slot's rows by *stage*; the rows reach the
   device in **one** copy per batch (from pinned memory, :func:`to_device`). The host knows how
   many images each stage has, so slicing needs no answer from the device.
2. Each op belongs to one of five stages, and per slot every stage runs once on its images
   (gathered by one index, written back by one ``index_copy_``; an empty stage runs too): a
   histogram stage (AutoContrast, Equalize: per image and channel histograms by one
   ``index_add_``, both look-up tables, the image's own picked), a table stage (Invert, Posterize,
   Solarize, SolarizeAdd, Brightness: a 256-entry table per image, built for all slots at once), a
   grey blend (Color, Contrast), Sharpness, and a geometric stage (Rotate, ShearX/Y, TranslateX/YRel:
   one affine sampling with a matrix per image). Within a stage the ops share their work and each
   image's own result is picked with ``torch.where``; images of other stages are not touched.

Grouping by stage rather than computing every op for the whole batch keeps the arithmetic per image
close to grouping by op (what a CPU device pays for), at five stages' launches per slot instead of
fifteen ops' plus an index copy each. ``benchmarks/aug_launches.py`` counts the ops.

Semantics follow timm + Pillow (13) and are checked op by op against them in
``tests/test_batch_randaugment.py``:

- per image ``num_ops`` ops drawn uniformly with replacement, applied in order, each with
  probability ``prob``; magnitude per application ``Normal(m, mstd)`` (``Uniform(0, m)`` for
  ``mstd=inf``) clipped to ``[0, magnitude_max or 10]``; timm's level -> argument mappings, random
  sign flips with probability 0.5 where timm uses ``_randomly_negate``;
- Posterize keeps ``max(min_posterize_bits, int(m / 10 * 4))`` bits, like the project's
  :class:`adadf.data.transforms.AtLeastBits` (Pillow >= 13 rejects 0 bits);
- every op returns integers 0..255 rounded (or truncated) the way Pillow does for that op, so
  the next op sees what PIL would; the batch is float32 between ops and uint8 at the end. An image
  whose op belongs to another stage keeps its pixels through that stage (``torch.where``).

Known differences from timm / PIL:

- Geometric ops (Rotate, ShearX/Y, TranslateX/YRel) always use **bilinear** sampling; timm picks
  bilinear or bicubic at random per application. The bilinear sampling is Pillow's own arithmetic
  in float64 (pixel centres at +0.5, sample point outside the image -> ``img_mean`` fill,
  neighbours clamped to the border, result truncated like Pillow's ``(UINT8)`` cast), so
  translations and shears match exactly in the tests. Rotate's matrix comes from torch's float64
  sin/cos (rounded to 15 decimals as Pillow does) rather than libm's, so a pixel can, rarely,
  differ by one grey level. float64 costs speed on GPUs with slow double precision.
- Pillow's Rotate short-cut (a copy at 0 degrees) is not taken; the identity matrix gives the
  same image.
- ``exact_geometry=False`` swaps the float64 sampler for float32 ``grid_sample`` (several times
  faster per geometric op on the CPU): then up to a few percent of the pixels of a geometric op's
  output come out one grey level off.
- float64 is used for the geometric sampling and the AutoContrast LUT (as Pillow uses double):
  fine on CPU and CUDA, not available on MPS. Only the CPU path is tested here; the CUDA test
  (CPU vs CUDA on the same plan) runs only where a GPU is present.
- Colour ops (Color, Contrast, Brightness, Sharpness blends; AutoContrast; Equalize; Solarize;
  SolarizeAdd; Posterize; Invert) use Pillow's integer formulas (ITU-R 601-2 luma in Pillow's
  fixed point, float32 blend truncated and clipped, Pillow's Equalize / AutoContrast LUTs) and
  match exactly in the tests; float32 blends on other hardware may in principle round differently.
- Random streams differ from timm's (Python ``random`` / numpy there, torch here), so a seed gives
  other augmentations than the reference pipeline, with the same distribution.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

LEVEL_DENOM = 10.0  # timm's _LEVEL_DENOM: magnitude 10 is the strongest level

OP_NAMES: tuple[str, ...] = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd", "Color",
    "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel",
)  # timm's _RAND_TRANSFORMS, same order
# The stages of a slot: every op belongs to exactly one; an image runs the stage of the op it drew.
HISTOGRAM_OPS = ("AutoContrast", "Equalize")  # a look-up table from the image's histogram
TABLE_OPS = ("Invert", "Posterize", "Solarize", "SolarizeAdd", "Brightness")  # a table from the argument
GREY_OPS = ("Color", "Contrast")  # a blend with the luma image or its mean grey
SHARPNESS_OPS = ("Sharpness",)  # a blend with the SMOOTH-filtered image
GEOMETRIC_OPS = ("Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")  # an affine sampling
STAGES = (HISTOGRAM_OPS, TABLE_OPS, GREY_OPS, SHARPNESS_OPS, GEOMETRIC_OPS)
_MATRIX_ENTRY = {"ShearX": 1, "ShearY": 3, "TranslateXRel": 2, "TranslateYRel": 5}  # index in (a..f)
_IDENTITY = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0], dtype=torch.float64)  # (a..f)


# ---------------------------------------------------------------------------------------- helpers
def to_device(values: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small host tensor (plan, arguments, flips) on ``device`` without a device sync: a CUDA
    copy from pageable memory first waits for the stream's queued work, one from pinned memory
    does not (PyTorch caches pinned blocks, so pinning a few bytes per call is cheap)."""
    if device.type != "cuda" or values.device.type != "cpu":
        return values.to(device)
    return values.pin_memory().to(device, non_blocking=True)


class OnDevice:
    """A small constant (fill colour, mean, 1/std) and its copy on each device that asked for it:
    copied once, not once per batch. Pickles without the copies."""

    def __init__(self, values: torch.Tensor) -> None:
        self.values = values
        self._copies: dict[torch.device, torch.Tensor] = {}

    def __call__(self, device: torch.device) -> torch.Tensor:
        if device not in self._copies:
            self._copies[device] = to_device(self.values, device)
        return self._copies[device]

    def __getstate__(self) -> dict:
        return {"values": self.values, "_copies": {}}


_LUMA_WEIGHTS = OnDevice(torch.tensor([19595.0, 38470.0, 7471.0]).view(1, 3, 1, 1))  # Pillow's L, / 65536
_ONE = OnDevice(torch.ones((), dtype=torch.int64))


@functools.lru_cache(maxsize=64)
def ramp(size: int, dtype: torch.dtype, device: torch.device, shape: tuple[int, ...] = (-1,),
         offset: float = 0.0) -> torch.Tensor:
    """``arange(size) + offset`` viewed as ``shape``, made on ``device`` once: every batch of an
    image size reuses it (pixel coordinates, LUT ramps) instead of launching its own."""
    return torch.arange(offset, offset + size, dtype=dtype, device=device).view(shape)


@functools.lru_cache(maxsize=64)
def _xy(x_value: float, y_value: float, device: torch.device) -> torch.Tensor:
    """A float32 (x, y) pair [1, 2, 1, 1] on ``device``, made once: per-axis bounds and scales of
    a grid."""
    return to_device(torch.tensor([x_value, y_value], dtype=torch.float32).view(1, 2, 1, 1), device)


def _column(values: torch.Tensor) -> torch.Tensor:
    """Per-image values [N] as [N, 1, 1, 1], so they broadcast over channels and pixels."""
    return values.view(-1, 1, 1, 1)


def _blend(degenerate: torch.Tensor, image: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Pillow's ``Image.blend``: float32 ``deg + f * (img - deg)``, truncated and clipped to uint8.
    ``factor``: float32 [N] (one per image)."""
    return torch.floor(degenerate + _column(factor) * (image - degenerate)).clamp_(0, 255)


def _luma(x: torch.Tensor) -> torch.Tensor:
    """Pillow's RGB -> L conversion (ITU-R 601-2 in 16-bit fixed point, rounded): [N, 1, H, W].
    In float32, exactly: every partial sum is an integer below 255 * 65536 + 32768 < 2**24."""
    weighted = (x * _LUMA_WEIGHTS(x.device)).sum(1, keepdim=True)
    return torch.floor((weighted + 32768.0) * (1.0 / 65536.0))


def _mean_grey(luma: torch.Tensor) -> torch.Tensor:
    """``ImageEnhance.Contrast``'s grey: ``int(mean(L) + 0.5)`` per image, [N, 1, 1, 1] float32,
    as ``(2 S + n) // 2n`` on exact integers (the sum is exact in float64, the floor division
    too): no reduction order or rounding can move a tie."""
    count = luma.shape[-1] * luma.shape[-2]
    total = luma.sum(dim=(1, 2, 3), keepdim=True, dtype=torch.float64)
    return torch.div(2.0 * total + count, 2 * count, rounding_mode="floor").to(torch.float32)


@functools.lru_cache(maxsize=64)
def _interior(height: int, width: int, device: torch.device) -> torch.Tensor:
    """bool [1, 1, H, W]: True off the one-pixel border, made once per image size."""
    mask = torch.zeros(1, 1, height, width, dtype=torch.bool, device=device)
    mask[..., 1:-1, 1:-1] = True
    return mask


def _smooth(x: torch.Tensor) -> torch.Tensor:
    """``ImageFilter.SMOOTH`` (3x3 [[1,1,1],[1,5,1],[1,1,1]]/13, rounded); border pixels kept.

    The weighted sum S (a 3x3 box sum + 4 x centre) is an exact integer in float32 and S/13 is
    never within 1/26 of a .5, so rounding S/13 gives Pillow's result whatever order Pillow sums in.
    """
    box = F.avg_pool2d(x, 3, stride=1, padding=1, divisor_override=1)  # 3x3 sums (zero-padded border)
    smoothed = torch.floor((box + 4.0 * x) / 13.0 + 0.5)
    return torch.where(_interior(x.shape[-2], x.shape[-1], x.device), smoothed, x)


# ------------------------------------------------------------------ look-up tables (LUT ops)
def auto_contrast_lut(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """``ImageOps.autocontrast`` (cutoff 0) from each channel's lowest and highest non-empty bins
    (int64 [M, 1]): ``int(i * scale - lo * scale)``, scale = 255 / (hi - lo), in double like
    Pillow's Python code (a true division: ``255.0 / t`` would be 255 * (1 / t)). [M, 256] float64."""
    values = ramp(256, torch.float64, lo.device)
    scale = torch.full_like(lo, 255.0, dtype=torch.float64) / (hi - lo).clamp_min(1)
    lut = torch.trunc(values * scale - lo * scale).clamp_(0, 255)
    return torch.where(hi > lo, lut, values)  # flat channel: Pillow leaves it alone


def equalize_lut(hist: torch.Tensor, cum: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """``ImageOps.equalize`` from histograms [M, 256] (int64), their cumulative sums and highest
    non-empty bin (int64 [M, 1]): step from the pixel count minus that bin's, rounded LUT.
    [M, 256] float64."""
    step = (cum[:, 255:] - hist.gather(1, hi)) // 255  # 0 for a single non-empty bin too
    lut = (step // 2 + cum - hist) // step.clamp_min(1)  # cum - hist: Pillow's running n before h[i]
    lut = lut.clamp_(0, 255)  # the last bin can reach 256; Pillow clips LUT entries to uint8
    return torch.where(step == 0, ramp(256, torch.float64, hist.device), lut)  # step 0: unchanged


def invert_lut(values: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
    return 255.0 - values


def posterize_lut(values: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """Keep the top bits: ``x & ~(step-1)`` with ``step = 2**(8-bits)``, exact in float."""
    return torch.floor(values / step) * step


def solarize_lut(values: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """``ImageOps.solarize``: values >= threshold are inverted (threshold 256: no change)."""
    return torch.where(values < threshold, values, 255.0 - values)


def solarize_add_lut(values: torch.Tensor, add: torch.Tensor, threshold: float = 128.0) -> torch.Tensor:
    """timm's ``solarize_add``: values below 128 get ``add`` added, saturating at 255."""
    return torch.where(values < threshold, (values + add).clamp(max=255.0), values)


def brightness_lut(values: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``ImageEnhance.Brightness``: Pillow's blend with black, ``0 + f * (x - 0)`` truncated."""
    return torch.floor(factor * values).clamp_(0, 255)


_TABLE_LUTS = (invert_lut, posterize_lut, solarize_lut, solarize_add_lut, brightness_lut)  # as TABLE_OPS


def argument_tables(choice: torch.Tensor, arg: torch.Tensor) -> torch.Tensor:
    """The TABLE_OPS' tables for every row at once, [..., 256] float32: ``choice`` (float32) is
    the op's position in TABLE_OPS, ``arg`` (float32) its argument. Built once per batch for all
    slots; rows of other stages get a table that nobody reads."""
    values = ramp(256, torch.float32, arg.device)
    arg, choice = arg.unsqueeze(-1), choice.unsqueeze(-1)
    table = _TABLE_LUTS[-1](values, arg)
    for k, fn in enumerate(_TABLE_LUTS[:-1]):
        table = torch.where(choice == k, fn(values, arg), table)
    return table


# ------------------------------------------------------------------------------------ the stages
def _table_indices(x: torch.Tensor, tables_per_image: int) -> torch.Tensor:
    """The integer pixel values of ``x`` [n, 3, H, W] as flat int32 indices into stacked 256-entry
    tables, one per image (1) or per image and channel (3): value + 256 * table. int32 indices
    (``index_select``, ``index_add_``) are cheaper than int64 ones (``gather``) on the CPU."""
    n = x.shape[0]  # depends on the plan: not a cached ramp, whose first use per size adds an op
    offsets = torch.arange(0, n * tables_per_image * 256, 256, dtype=torch.int32, device=x.device)
    return (x.to(torch.int32) + offsets.view(n, tables_per_image, 1, 1)).view(-1)


def histogram_stage(x: torch.Tensor, choice: torch.Tensor) -> torch.Tensor:
    """AutoContrast (``choice`` 0) and Equalize (1) on their images [n, 3, H, W]: per image and
    channel a histogram (one ``index_add_``; ``bincount``'s size would depend on the data), both
    tables, the image's own picked, one ``index_select``."""
    n, c = x.shape[:2]
    indices = _table_indices(x, c)
    hist = torch.zeros(n * c * 256, dtype=torch.int64, device=x.device)
    hist = hist.index_add_(0, indices, _ONE(x.device).expand(indices.shape)).view(n * c, 256)
    cum = hist.cumsum(1)
    lo = (cum == 0).sum(1, keepdim=True)  # empty bins below the first non-empty one
    hi = (cum < cum[:, 255:]).sum(1, keepdim=True)  # bins before the one that completes the count
    auto = choice.repeat_interleave(c).view(n * c, 1) == HISTOGRAM_OPS.index("AutoContrast")
    lut = torch.where(auto, auto_contrast_lut(lo, hi), equalize_lut(hist, cum, hi))
    return lut.to(torch.float32).view(-1).index_select(0, indices).view_as(x)


def table_stage(x: torch.Tensor, tables: torch.Tensor) -> torch.Tensor:
    """Invert, Posterize, Solarize, SolarizeAdd, Brightness: each image through its own table
    [n, 256] (:func:`argument_tables`), all channels, one ``index_select``."""
    return tables.reshape(-1).index_select(0, _table_indices(x, 1)).view_as(x)


def grey_stage(x: torch.Tensor, choice: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Color (``choice`` 0: blend with the luma image) and Contrast (1: with its rounded mean grey)."""
    luma = _luma(x)
    return _blend(torch.where(_column(choice) == 0, luma, _mean_grey(luma)), x, factor)


def sharpness_stage(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``ImageEnhance.Sharpness``: blend with the SMOOTH-filtered image."""
    return _blend(_smooth(x), x, factor)


def geometric_stage(x: torch.Tensor, matrix: torch.Tensor, fill: torch.Tensor, exact: bool) -> torch.Tensor:
    """Rotate, ShearX/Y, TranslateX/YRel: one affine sampling with a matrix (a..f) per image,
    Pillow's float64 arithmetic (``exact``) or float32 ``grid_sample``."""
    return (op_affine if exact else affine_grid_sample)(x, matrix, fill)


# --------------------------------------------------------------------------------- geometric ops
def affine_grid_sample(x: torch.Tensor, coeffs: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """Same sampling as :func:`op_affine` through float32 ``grid_sample`` (``coeffs`` [N, 6]
    float32): ~10x faster on the CPU, but a value that is an integer in Pillow's double arithmetic
    can land just below it and be truncated one grey level lower (about 1% of the pixels of a
    translated image). x and y are computed together, each as ``a X' + b Y' + c`` in float32."""
    n, _, h, w = x.shape
    per_x, per_y, offset = coeffs.view(n, 2, 3, 1, 1).unbind(2)  # (a, d), (b, e), (c, f): [N, 2, 1, 1]
    xy = (per_x * ramp(w, torch.float32, x.device, (1, 1, 1, w), 0.5)
          + per_y * ramp(h, torch.float32, x.device, (1, 1, h, 1), 0.5) + offset)  # [N, 2, H, W]
    inside = ((xy >= 0) & (xy < _xy(w, h, x.device))).all(1, keepdim=True)
    grid = (xy * _xy(2.0 / w, 2.0 / h, x.device) - 1.0).permute(0, 2, 3, 1)  # [N, H, W, 2], strided
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    out = torch.floor(out + 1e-4).clamp_(0, 255)  # 1e-4: float32 error on exact integers
    return torch.where(inside, out, fill)


def op_affine(x: torch.Tensor, coeffs: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """PIL ``Image.transform(AFFINE, (a, b, c, d, e, f), BILINEAR)`` with one matrix per image
    (``coeffs`` [N, 6] on ``x``'s device; ``fill`` [1, 3, 1, 1] float32 there too).

    Reproduces Pillow's ``affine_transform`` + ``bilinear_filter32RGB`` in float64 (Pillow uses
    double): output pixel (X, Y) samples the input at (a X' + b Y' + c, d X' + e Y' + f) with
    X' = X + 0.5, Y' = Y + 0.5; a point outside [0, W) x [0, H) takes ``fill``; inside, the two
    rows are interpolated along x, then along y, with border-clamped neighbours, and the result is
    truncated like Pillow's cast to UINT8.
    """
    n, c, h, w = x.shape
    dev = x.device
    cf = coeffs.to(torch.float64).view(n, 6, 1, 1)
    ys = ramp(h, torch.float64, dev, (1, h, 1), 0.5)
    xs = ramp(w, torch.float64, dev, (1, 1, w), 0.5)
    x_in = cf[:, 0] * xs + cf[:, 1] * ys + cf[:, 2]
    y_in = cf[:, 3] * xs + cf[:, 4] * ys + cf[:, 5]
    inside = (x_in >= 0) & (x_in < w) & (y_in >= 0) & (y_in < h)
    x_in, y_in = x_in - 0.5, y_in - 0.5
    x0, y0 = torch.floor(x_in), torch.floor(y_in)
    dx = (x_in - x0).view(n, 1, h * w)
    dy = (y_in - y0).view(n, 1, h * w)
    x0 = x0.clamp(-1, w).to(torch.int64)  # outside points are masked; clamp keeps indices sane
    y0 = y0.clamp(-1, h).to(torch.int64)
    cols = (x0.clamp(0, w - 1), (x0 + 1).clamp(0, w - 1))
    rows = (y0.clamp(0, h - 1) * w, (y0 + 1).clamp(0, h - 1) * w)
    flat = x.reshape(n, c, h * w).to(torch.float64)

    def lerp_row(row: torch.Tensor) -> torch.Tensor:
        """Pillow's BILINEAR(v, in[x0], in[x1], dx) = a + (b - a) * dx, in place to save passes."""
        left = torch.gather(flat, 2, (row + cols[0]).view(n, 1, h * w).expand(n, c, h * w))
        right = torch.gather(flat, 2, (row + cols[1]).view(n, 1, h * w).expand(n, c, h * w))
        return right.sub_(left).mul_(dx).add_(left)

    top = lerp_row(rows[0])
    out = lerp_row(rows[1]).sub_(top).mul_(dy).add_(top).floor_().clamp_(0, 255).view(n, c, h, w)
    out = out.to(torch.float32)
    return torch.where(inside.unsqueeze(1), out, fill)


def rotate_coeffs(degrees: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """PIL ``Image.rotate`` (counter-clockwise about (w/2, h/2), no expand) as [..., 6] matrices
    (``degrees``: float64)."""
    angle = -(torch.remainder(degrees, 360.0) * (math.pi / 180.0))
    cos = torch.round(torch.cos(angle), decimals=15)  # Pillow rounds the matrix to 15 decimals
    sin = torch.round(torch.sin(angle), decimals=15)
    cx, cy = width / 2.0, height / 2.0
    c = cos * -cx + sin * -cy + cx
    f = -sin * -cx + cos * -cy + cy
    return torch.stack((cos, sin, c, -sin, cos, f), dim=-1)


_ENTRY_OF = torch.tensor([_MATRIX_ENTRY.get(name, -1) for name in OP_NAMES])


def op_matrices(ops: torch.Tensor, arg: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """The affine matrix (a..f) [..., 6] float64 of each draw: Rotate's (``arg`` in degrees), the
    identity with one entry set to ``arg`` for timm's shear_x (b), shear_y (d), translate_x (c),
    translate_y (f) (translations in pixels; positive moves the content left / up), the identity
    for the other ops."""
    matrix = torch.where((ops == OP_NAMES.index("Rotate")).unsqueeze(-1), rotate_coeffs(arg, width, height), _IDENTITY)
    sets = F.one_hot(_ENTRY_OF[ops] + 1, 7)[..., 1:].bool()  # [..., 6]: the entry this op sets
    return torch.where(sets, arg.unsqueeze(-1), matrix)


# ------------------------------------------------------------------- timm level -> op argument
def level_rotate(m: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    return m / LEVEL_DENOM * 30.0 * sign


def level_posterize(m: torch.Tensor, min_bits: int = 1) -> torch.Tensor:
    """timm's ``int(m / 10 * 4)`` bits, raised to ``min_bits`` (Pillow >= 13 rejects 0 bits)."""
    return torch.floor(m / LEVEL_DENOM * 4.0).clamp_min(min_bits)


def level_solarize(m: torch.Tensor) -> torch.Tensor:
    return torch.floor(m / LEVEL_DENOM * 256.0).clamp_max(256.0)


def level_solarize_add(m: torch.Tensor) -> torch.Tensor:
    return torch.floor(m / LEVEL_DENOM * 110.0).clamp_max(128.0)


def level_enhance(m: torch.Tensor) -> torch.Tensor:
    """Color/Contrast/Brightness/Sharpness factor in [0.1, 1.9] (1.0 is no change)."""
    return m / LEVEL_DENOM * 1.8 + 0.1


def level_shear(m: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    return m / LEVEL_DENOM * 0.3 * sign


def level_translate_rel(m: torch.Tensor, sign: torch.Tensor, translate_pct: float = 0.45) -> torch.Tensor:
    return m / LEVEL_DENOM * translate_pct * sign


# --------------------------------------------------------------------------------- the transform
@dataclass(frozen=True)
class Plan:
    """All random draws for one batch, on the CPU: [num_ops, B] each."""

    ops: torch.Tensor  # int64 index into OP_NAMES
    apply: torch.Tensor  # bool: the op's prob coin came up
    magnitudes: torch.Tensor  # float64, already clipped to [0, magnitude_max]
    signs: torch.Tensor  # float64 +-1 (used by Rotate, Shear*, Translate*)


# Columns of BatchRandAugment.layout()'s rows: what a stage reads per image.
COL_IMAGE, COL_CHOICE, COL_ARG, COL_MATRIX = 0, 1, 2, slice(3, 9)
_STAGE_OF = torch.tensor([1 + next(k for k, ops in enumerate(STAGES) if name in ops) for name in OP_NAMES])
_CHOICE_OF = torch.tensor([STAGES[k - 1].index(name) for k, name in zip(_STAGE_OF.tolist(), OP_NAMES)])
Spans = list[tuple[int, int]]  # per stage, (start, end) of its rows in a slot


def run_slot(x: torch.Tensor, index: torch.Tensor, choice: torch.Tensor, arg: torch.Tensor, tables: torch.Tensor,
             matrices: torch.Tensor, spans: Spans, fill: torch.Tensor, exact: bool) -> torch.Tensor:
    """One op slot, in place on the float32 batch ``x``: every stage gathers its images, runs, and
    writes them back. ``index``, ``choice``, ``arg`` [B], ``tables`` [B, 256] and ``matrices``
    [B, 6] are the slot's columns of :meth:`BatchRandAugment.layout`'s rows, in stage order. An
    empty stage runs too: the sequence of ops is the same whatever the plan."""
    hist, table, grey, sharp, geometric = (slice(start, end) for start, end in spans)
    stages = (
        (hist, lambda sub: histogram_stage(sub, choice[hist])),
        (table, lambda sub: table_stage(sub, tables[table])),
        (grey, lambda sub: grey_stage(sub, choice[grey], arg[grey])),
        (sharp, lambda sub: sharpness_stage(sub, arg[sharp])),
        (geometric, lambda sub: geometric_stage(sub, matrices[geometric], fill, exact)),
    )
    for part, stage in stages:
        images = index[part]
        x.index_copy_(0, images, stage(x[images]))
    return x


class BatchRandAugment:
    """timm ``rand-m{magnitude}-n{num_ops}-mstd{magnitude_std}`` on uint8 [B, 3, H, W] batches."""

    def __init__(self, num_ops: int = 3, magnitude: float = 5.0, magnitude_std: float = 0.5, prob: float = 0.5,
                 img_mean: tuple[int, int, int] = (124, 116, 104), min_posterize_bits: int = 1,
                 magnitude_max: float | None = None, translate_pct: float = 0.45, exact_geometry: bool = True
                 ) -> None:
        self.num_ops = int(num_ops)
        self.magnitude = float(magnitude)
        self.magnitude_std = float(magnitude_std)
        self.prob = float(prob)
        self.img_mean = tuple(float(v) for v in img_mean)
        self.min_posterize_bits = int(min_posterize_bits)
        self.magnitude_max = float(magnitude_max) if magnitude_max else LEVEL_DENOM
        self.translate_pct = float(translate_pct)
        self.exact_geometry = bool(exact_geometry)  # False: float32 grid_sample, faster, off-by-ones
        self._fill = OnDevice(torch.tensor(self.img_mean, dtype=torch.float32).round().view(1, 3, 1, 1))

    @classmethod
    def from_config(cls, config_str: str, **kwargs) -> "BatchRandAugment":
        """Build from a timm ``rand-...`` string (keys m, n, mstd, mmax, p); ``kwargs`` pass through.

        Mirrors ``rand_augment_transform``'s parsing: defaults m=10, n=2, mstd=0, p=0.5, and an
        mstd above 100 means uniform magnitudes. Increasing ops (``inc1``) and other op sets
        (``t...``) are not implemented and raise.
        """
        parts = config_str.split("-")
        if parts[0] != "rand":
            raise ValueError(f"{config_str!r}: expected a timm 'rand-...' RandAugment string")
        args: dict = {"num_ops": 2, "magnitude": LEVEL_DENOM, "magnitude_std": 0.0, "prob": 0.5}
        keys = {"m": "magnitude", "n": "num_ops", "mstd": "magnitude_std", "mmax": "magnitude_max", "p": "prob"}
        for part in parts[1:]:
            if part == "inc0":  # timm's default anyway
                continue
            key = next((k for k in ("mstd", "mmax", "m", "n", "p") if part.startswith(k)), None)
            if key is None:
                raise ValueError(f"{config_str!r}: section {part!r} is not supported")
            value = float(part[len(key):])
            args[keys[key]] = float("inf") if key == "mstd" and value > 100 else value
        args.update(kwargs)
        return cls(**args)

    def plan(self, batch_size: int, generator: torch.Generator | None = None) -> Plan:
        """Draw every op choice, coin, magnitude and sign for a batch up front, on the CPU."""
        shape = (self.num_ops, batch_size)
        ops = torch.randint(len(OP_NAMES), shape, generator=generator)
        apply = (torch.rand(shape, generator=generator, dtype=torch.float64) < self.prob) | (self.prob >= 1.0)
        if math.isinf(self.magnitude_std):
            mags = torch.rand(shape, generator=generator, dtype=torch.float64) * self.magnitude
        elif self.magnitude_std > 0:
            noise = torch.randn(shape, generator=generator, dtype=torch.float64)
            mags = self.magnitude + self.magnitude_std * noise
        else:
            mags = torch.full(shape, self.magnitude, dtype=torch.float64)
        mags = mags.clamp(0.0, self.magnitude_max)
        negate = torch.rand(shape, generator=generator, dtype=torch.float64) > 0.5
        signs = torch.where(negate, -1.0, 1.0).to(torch.float64)
        return Plan(ops=ops, apply=apply, magnitudes=mags, signs=signs)

    def op_arguments(self, plan: Plan, width: int, height: int) -> torch.Tensor:
        """timm's level mapping of every draw for every op: [len(OP_NAMES), num_ops, B] float64
        (Posterize: the step ``2**(8-bits)``; translations in pixels; 0 for ops without one)."""
        m, s = plan.magnitudes, plan.signs
        translate, enhance, shear = level_translate_rel(m, s, self.translate_pct), level_enhance(m), level_shear(m, s)
        args = {
            "Posterize": torch.pow(2.0, 8 - level_posterize(m, self.min_posterize_bits)),
            "Solarize": level_solarize(m), "SolarizeAdd": level_solarize_add(m), "Brightness": enhance,
            "Color": enhance, "Contrast": enhance, "Sharpness": enhance, "Rotate": level_rotate(m, s),
            "ShearX": shear, "ShearY": shear, "TranslateXRel": translate * width, "TranslateYRel": translate * height,
        }
        zeros = torch.zeros_like(m)
        return torch.stack([args.get(name, zeros) for name in OP_NAMES])

    def layout(self, plan: Plan, width: int, height: int) -> tuple[torch.Tensor, list[Spans]]:
        """The plan as per-image rows, on the CPU, vectorised (no loop over images).

        Returns ``rows`` [num_ops, B, 9] float64, each slot's images in stage order (no op first,
        then STAGES' order; image order kept within a stage): (image index, the op's position in
        its stage, its argument, its affine matrix a..f); and per slot the (start, end) of each stage's rows as Python
        ints: the host knows every size, so the device is never asked.
        """
        ops = plan.ops
        stage = torch.where(plan.apply, _STAGE_OF[ops], 0)
        arg = self.op_arguments(plan, width, height).gather(0, ops.unsqueeze(0))[0]
        matrix = op_matrices(ops, arg, width, height)
        order = torch.argsort(stage, dim=1, stable=True)
        rows = torch.cat([torch.stack((order, _CHOICE_OF[ops]), -1).double(), arg.unsqueeze(-1), matrix], -1)
        rows[..., 1:] = rows[..., 1:].gather(1, order.unsqueeze(-1).expand(*order.shape, rows.shape[-1] - 1))
        ends = F.one_hot(stage, len(STAGES) + 1).sum(1).cumsum(1).tolist()  # per slot: none, then STAGES
        return rows, [list(zip(slot[:-1], slot[1:])) for slot in ends]

    def apply_plan(self, images: torch.Tensor, plan: Plan) -> torch.Tensor:
        """Run ``plan`` on uint8 ``images``: its rows copied to the device once, the table ops'
        tables built once, then per slot and stage one gather, the stage, one scatter (:func:`run_slot`)."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected [B, 3, H, W], got {tuple(images.shape)}")
        rows, spans = self.layout(plan, images.shape[-1], images.shape[-2])
        rows = to_device(rows, images.device)
        index = rows[..., COL_IMAGE].to(torch.int64)
        params = rows.to(torch.float32)
        choice, arg = params[..., COL_CHOICE], params[..., COL_ARG]
        tables = argument_tables(choice, arg)
        matrices = rows[..., COL_MATRIX] if self.exact_geometry else params[..., COL_MATRIX]
        fill = self._fill(images.device)
        x = images.to(torch.float32)
        for slot, slot_spans in enumerate(spans):
            run_slot(x, index[slot], choice[slot], arg[slot], tables[slot], matrices[slot], slot_spans, fill,
                     self.exact_geometry)
        return x.to(torch.uint8)  # every stage returns integers 0..255 (the fill is rounded too)

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """uint8 [B, 3, H, W] on any device -> uint8 [B, 3, H, W], same device."""
        return self.apply_plan(images, self.plan(images.shape[0], generator))

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(n={self.num_ops}, m={self.magnitude}, mstd={self.magnitude_std}, "
                f"p={self.prob}, mmax={self.magnitude_max}, fill={self.img_mean})")
