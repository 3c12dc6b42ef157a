"""timm's RandAugment (``rand-mM-nN-mstdS``, the ``_RAND_TRANSFORMS`` op set) on whole uint8 batches.

The reference pipeline runs :func:`timm.data.auto_augment.rand_augment_transform` per image in PIL on
the CPU. :class:`BatchRandAugment` does the same on a ``[B, 3, H, W]`` uint8 batch with plain torch
ops, on whatever device the batch lives on (CPU or CUDA): no PIL and no Python loop over images.
Every random draw is made up front on the CPU (from the caller's ``torch.Generator`` or torch's
global RNG) into a :class:`Plan`; then, for every op slot and every op, the images that drew that op
(and passed the ``prob`` coin) are gathered, transformed together with their own arguments, and
written back. Index tensors are built on the CPU and copied to the device from pinned memory
(:func:`to_device`), so the device is never waited on to decide what to run.

Semantics follow timm + Pillow (13) and are checked op by op against them in
``tests/test_batch_randaugment.py``:

- per image ``num_ops`` ops drawn uniformly with replacement, applied in order, each with
  probability ``prob``; magnitude per application ``Normal(m, mstd)`` (``Uniform(0, m)`` for
  ``mstd=inf``) clipped to ``[0, magnitude_max or 10]``; timm's level -> argument mappings, random
  sign flips with probability 0.5 where timm uses ``_randomly_negate``;
- Posterize keeps ``max(min_posterize_bits, int(m / 10 * 4))`` bits, like the project's
  :class:`adadf.data.transforms.AtLeastBits` (Pillow >= 13 rejects 0 bits);
- every op returns integers 0..255 rounded (or truncated) the way Pillow does for that op, so
  the next op sees what PIL would; the batch is float32 between ops and uint8 at the end.

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

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

LEVEL_DENOM = 10.0  # timm's _LEVEL_DENOM: magnitude 10 is the strongest level

OP_NAMES: tuple[str, ...] = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd", "Color",
    "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel",
)  # timm's _RAND_TRANSFORMS, same order


# ---------------------------------------------------------------------------------------- helpers
def to_device(values: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small host tensor (plan, arguments, indices) on ``device`` without a device sync: a CUDA
    copy from pageable memory first waits for the stream's queued work, one from pinned memory
    does not (PyTorch caches pinned blocks, so pinning a few bytes per call is cheap)."""
    if device.type != "cuda" or values.device.type != "cpu":
        return values.to(device)
    return values.pin_memory().to(device, non_blocking=True)


def _per_image(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-image arguments as [N, 1, 1, 1] on ``x``'s device, so they broadcast over pixels."""
    return to_device(values.to(torch.float32), x.device).view(-1, 1, 1, 1)


def _fill_tensor(fill: tuple[float, float, float] | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return to_device(torch.as_tensor(fill, dtype=torch.float32), x.device).view(1, 3, 1, 1)


def _blend(degenerate: torch.Tensor, image: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Pillow's ``Image.blend``: float32 ``deg + f * (img - deg)``, truncated and clipped to uint8."""
    f = _per_image(factor, image)
    return torch.floor(degenerate + f * (image - degenerate)).clamp_(0, 255)


def _luma(x: torch.Tensor) -> torch.Tensor:
    """Pillow's RGB -> L conversion (ITU-R 601-2 in 16-bit fixed point, rounded): [N, 1, H, W]."""
    xi = x.to(torch.int32)
    luma = (xi[:, 0] * 19595 + xi[:, 1] * 38470 + xi[:, 2] * 7471 + 32768) >> 16
    return luma.unsqueeze(1).to(torch.float32)


def _apply_lut(x: torch.Tensor, lut: torch.Tensor) -> torch.Tensor:
    """Map every channel of every image through its own 256-entry table ``lut`` [N, 3, 256]."""
    n, c, h, w = x.shape
    idx = x.reshape(n * c, h * w).to(torch.int64)
    return torch.gather(lut.reshape(n * c, 256).to(x.dtype), 1, idx).view(n, c, h, w)


def _histogram(x: torch.Tensor) -> torch.Tensor:
    """Per image and channel 256-bin histograms [N, 3, 256] (int64), with no device sync."""
    n, c, h, w = x.shape
    idx = x.reshape(n * c, h * w).to(torch.int64)
    hist = torch.zeros(n * c, 256, dtype=torch.int64, device=x.device)
    hist.scatter_add_(1, idx, torch.ones_like(idx))
    return hist.view(n, c, 256)


# ------------------------------------------------------------------------------------ colour ops
def op_auto_contrast(x: torch.Tensor) -> torch.Tensor:
    """``ImageOps.autocontrast`` (cutoff 0): per channel LUT ``int(i * 255/(hi-lo) - lo * scale)``."""
    flat = x.flatten(2)
    lo = flat.amin(2).to(torch.float64).unsqueeze(-1)
    hi = flat.amax(2).to(torch.float64).unsqueeze(-1)
    ramp = torch.arange(256, dtype=torch.float64, device=x.device)
    # double, like Pillow's Python code; a true division (``255.0 / t`` would be 255 * (1 / t))
    scale = torch.full_like(lo, 255.0) / (hi - lo).clamp_min(1.0)
    offset = -lo * scale
    lut = torch.trunc(ramp * scale + offset).clamp(0, 255)
    lut = torch.where(hi > lo, lut, ramp.expand_as(lut))  # flat channel: Pillow leaves it alone
    return _apply_lut(x, lut)


def op_equalize(x: torch.Tensor) -> torch.Tensor:
    """``ImageOps.equalize``: step from the histogram minus its last non-empty bin, rounded LUT."""
    hist = _histogram(x)
    bins = torch.arange(256, device=x.device)
    nonempty = hist > 0
    last = torch.where(nonempty, bins, torch.full_like(bins, -1)).amax(-1, keepdim=True)
    last_count = torch.gather(hist, -1, last.clamp_min(0))
    step = (hist.sum(-1, keepdim=True) - last_count) // 255
    cum_before = torch.cumsum(hist, -1) - hist  # Pillow's running n before adding h[i]
    lut = (step // 2 + cum_before) // step.clamp_min(1)
    lut = lut.clamp_(0, 255)  # the last bin can reach 256; Pillow clips LUT entries to uint8
    keep = (nonempty.sum(-1, keepdim=True) <= 1) | (step == 0)
    lut = torch.where(keep, bins.expand_as(lut), lut)
    return _apply_lut(x, lut)


def op_invert(x: torch.Tensor) -> torch.Tensor:
    return 255.0 - x


def op_posterize(x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Keep the top ``bits`` [N] bits: ``x & ~(2**(8-bits)-1)``, exact in float for powers of 2."""
    step = _per_image(torch.pow(2.0, 8 - bits.to(torch.float64)), x)
    return torch.floor(x / step) * step


def op_solarize(x: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """``ImageOps.solarize``: values >= threshold [N] are inverted (threshold 256: no change)."""
    return torch.where(x < _per_image(threshold, x), x, 255.0 - x)


def op_solarize_add(x: torch.Tensor, add: torch.Tensor, threshold: float = 128.0) -> torch.Tensor:
    """timm's ``solarize_add``: values below 128 get ``add`` [N] added, saturating at 255."""
    return torch.where(x < threshold, (x + _per_image(add, x)).clamp_(max=255.0), x)


def op_color(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``ImageEnhance.Color``: blend with the L (luma) grey image."""
    return _blend(_luma(x).expand_as(x), x, factor)


def op_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``ImageEnhance.Contrast``: blend with the rounded mean of the L image (one grey per image)."""
    # int(S / N + 0.5) in exact integers: no reduction order or reciprocal can move a tie
    total = _luma(x).to(torch.int64).sum(dim=(1, 2, 3))
    count = x.shape[-1] * x.shape[-2]
    grey = torch.div(2 * total + count, 2 * count, rounding_mode="floor")
    grey = grey.to(torch.float32).view(-1, 1, 1, 1)
    return _blend(grey.expand_as(x), x, factor)


def op_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``ImageEnhance.Brightness``: blend with black, i.e. ``0 + f * (x - 0)`` truncated."""
    return torch.floor(_per_image(factor, x) * x).clamp_(0, 255)


def _smooth(x: torch.Tensor) -> torch.Tensor:
    """``ImageFilter.SMOOTH`` (3x3 [[1,1,1],[1,5,1],[1,1,1]]/13, rounded); border pixels kept.

    The weighted sum S is an exact integer in float32 and S/13 is never within 1/26 of a .5, so
    rounding S/13 gives Pillow's result whatever order Pillow sums in; shifted adds beat conv2d.
    """
    if x.shape[-1] < 3 or x.shape[-2] < 3:
        return x.clone()
    rows = x[..., :-2, :] + x[..., 1:-1, :] + x[..., 2:, :]
    total = rows[..., :-2] + rows[..., 1:-1] + rows[..., 2:] + 4.0 * x[..., 1:-1, 1:-1]
    out = x.clone()
    out[..., 1:-1, 1:-1] = torch.floor(total / 13.0 + 0.5)
    return out


def op_sharpness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``ImageEnhance.Sharpness``: blend with the SMOOTH-filtered image."""
    return _blend(_smooth(x), x, factor)


# --------------------------------------------------------------------------------- geometric ops
def _affine_fast(x: torch.Tensor, coeffs: torch.Tensor, fill: tuple[float, float, float] | torch.Tensor
                 ) -> torch.Tensor:
    """Same sampling as :func:`op_affine` through float32 ``grid_sample``: ~10x faster on the CPU,
    but a value that is an integer in Pillow's double arithmetic can land just below it and be
    truncated one grey level lower (about 1% of the pixels of a translated image)."""
    n, _, h, w = x.shape
    cf = to_device(coeffs.to(torch.float32), x.device).view(n, 6, 1, 1)
    ys = torch.arange(h, dtype=torch.float32, device=x.device).view(1, h, 1) + 0.5
    xs = torch.arange(w, dtype=torch.float32, device=x.device).view(1, 1, w) + 0.5
    x_in = cf[:, 0] * xs + cf[:, 1] * ys + cf[:, 2]
    y_in = cf[:, 3] * xs + cf[:, 4] * ys + cf[:, 5]
    inside = (x_in >= 0) & (x_in < w) & (y_in >= 0) & (y_in < h)
    grid = torch.stack((x_in * (2.0 / w) - 1.0, y_in * (2.0 / h) - 1.0), dim=-1)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    out = torch.floor(out + 1e-4).clamp_(0, 255)  # 1e-4: float32 error on exact integers
    return torch.where(inside.unsqueeze(1), out, _fill_tensor(fill, x))


def op_affine(x: torch.Tensor, coeffs: torch.Tensor, fill: tuple[float, float, float] | torch.Tensor,
              exact: bool = True) -> torch.Tensor:
    """PIL ``Image.transform(AFFINE, (a, b, c, d, e, f), BILINEAR)`` with one matrix per image.

    Reproduces Pillow's ``affine_transform`` + ``bilinear_filter32RGB`` in float64 (Pillow uses
    double): output pixel (X, Y) samples the input at (a X' + b Y' + c, d X' + e Y' + f) with
    X' = X + 0.5, Y' = Y + 0.5; a point outside [0, W) x [0, H) takes ``fill``; inside, the two
    rows are interpolated along x, then along y, with border-clamped neighbours, and the result is
    truncated like Pillow's cast to UINT8. ``exact=False``: :func:`_affine_fast`.
    """
    if not exact:
        return _affine_fast(x, coeffs, fill)
    n, c, h, w = x.shape
    dev = x.device
    cf = to_device(coeffs.to(torch.float64), dev).view(n, 6, 1, 1)
    ys = torch.arange(h, dtype=torch.float64, device=dev).view(1, h, 1) + 0.5
    xs = torch.arange(w, dtype=torch.float64, device=dev).view(1, 1, w) + 0.5
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
    return torch.where(inside.unsqueeze(1), out, _fill_tensor(fill, x))


def rotate_coeffs(degrees: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """PIL ``Image.rotate`` (counter-clockwise about (w/2, h/2), no expand) as [N, 6] matrices."""
    angle = -(torch.remainder(degrees.to(torch.float64), 360.0) * (math.pi / 180.0))
    cos = torch.round(torch.cos(angle), decimals=15)  # Pillow rounds the matrix to 15 decimals
    sin = torch.round(torch.sin(angle), decimals=15)
    cx, cy = width / 2.0, height / 2.0
    c = cos * -cx + sin * -cy + cx
    f = -sin * -cx + cos * -cy + cy
    return torch.stack((cos, sin, c, -sin, cos, f), dim=1)


def op_rotate(x: torch.Tensor, degrees: torch.Tensor, fill: tuple[float, float, float],
              exact: bool = True) -> torch.Tensor:
    return op_affine(x, rotate_coeffs(degrees, x.shape[-1], x.shape[-2]), fill, exact)


def _coeffs(n: int, **entries: torch.Tensor) -> torch.Tensor:
    """Identity affine matrices [n, 6] with the named entries (a..f) replaced."""
    out = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0], dtype=torch.float64).repeat(n, 1)
    for name, values in entries.items():
        out[:, "abcdef".index(name)] = values.to(torch.float64).cpu()
    return out


def op_shear_x(x: torch.Tensor, factor: torch.Tensor, fill: tuple[float, float, float],
               exact: bool = True) -> torch.Tensor:
    """timm ``shear_x``: matrix (1, f, 0, 0, 1, 0), i.e. about the top-left corner."""
    return op_affine(x, _coeffs(x.shape[0], b=factor), fill, exact)


def op_shear_y(x: torch.Tensor, factor: torch.Tensor, fill: tuple[float, float, float],
               exact: bool = True) -> torch.Tensor:
    return op_affine(x, _coeffs(x.shape[0], d=factor), fill, exact)


def op_translate_x_rel(x: torch.Tensor, pct: torch.Tensor, fill: tuple[float, float, float],
                       exact: bool = True) -> torch.Tensor:
    """timm ``translate_x_rel``: shift by ``pct * width`` pixels (positive: content moves left)."""
    return op_affine(x, _coeffs(x.shape[0], c=pct * x.shape[-1]), fill, exact)


def op_translate_y_rel(x: torch.Tensor, pct: torch.Tensor, fill: tuple[float, float, float],
                       exact: bool = True) -> torch.Tensor:
    return op_affine(x, _coeffs(x.shape[0], f=pct * x.shape[-2]), fill, exact)


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


OpFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


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
        self._ops: tuple[OpFn, ...] = self._op_table()

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

    def _op_table(self) -> tuple[OpFn, ...]:
        """One ``fn(x, magnitudes, signs)`` per name in OP_NAMES: timm's level mapping + the op."""
        fill, bits, pct, ex = self.img_mean, self.min_posterize_bits, self.translate_pct, self.exact_geometry
        return (
            lambda x, m, s: op_auto_contrast(x),
            lambda x, m, s: op_equalize(x),
            lambda x, m, s: op_invert(x),
            lambda x, m, s: op_rotate(x, level_rotate(m, s), fill, ex),
            lambda x, m, s: op_posterize(x, level_posterize(m, bits)),
            lambda x, m, s: op_solarize(x, level_solarize(m)),
            lambda x, m, s: op_solarize_add(x, level_solarize_add(m)),
            lambda x, m, s: op_color(x, level_enhance(m)),
            lambda x, m, s: op_contrast(x, level_enhance(m)),
            lambda x, m, s: op_brightness(x, level_enhance(m)),
            lambda x, m, s: op_sharpness(x, level_enhance(m)),
            lambda x, m, s: op_shear_x(x, level_shear(m, s), fill, ex),
            lambda x, m, s: op_shear_y(x, level_shear(m, s), fill, ex),
            lambda x, m, s: op_translate_x_rel(x, level_translate_rel(m, s, pct), fill, ex),
            lambda x, m, s: op_translate_y_rel(x, level_translate_rel(m, s, pct), fill, ex),
        )

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

    def apply_plan(self, images: torch.Tensor, plan: Plan) -> torch.Tensor:
        """Run ``plan`` on uint8 ``images``: per slot, per op, the images that drew it, together."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected [B, 3, H, W], got {tuple(images.shape)}")
        x = images.to(torch.float32, copy=True)  # written in place below
        for slot in range(plan.ops.shape[0]):
            for k, fn in enumerate(self._ops):
                chosen = torch.nonzero(plan.apply[slot] & (plan.ops[slot] == k)).flatten()
                if chosen.numel() == 0:
                    continue
                idx = to_device(chosen, x.device)
                out = fn(x.index_select(0, idx), plan.magnitudes[slot, chosen], plan.signs[slot, chosen])
                x.index_copy_(0, idx, out)
        return x.round_().clamp_(0, 255).to(torch.uint8)

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """uint8 [B, 3, H, W] on any device -> uint8 [B, 3, H, W], same device."""
        return self.apply_plan(images, self.plan(images.shape[0], generator))

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(n={self.num_ops}, m={self.magnitude}, mstd={self.magnitude_std}, "
                f"p={self.prob}, mmax={self.magnitude_max}, fill={self.img_mean})")
