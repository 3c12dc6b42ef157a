"""Image modes (issue 12, item 5): every file decodes to correctly scaled 8-bit RGB (adadf.data.decode)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from adadf.data.decode import load_rgb

GRADIENT16 = (np.arange(32 * 32, dtype=np.int64).reshape(32, 32) * 64).clip(0, 65535)  # 0 .. 65472


def _gray(expected: np.ndarray, image: Image.Image) -> None:
    assert image.mode == "RGB"
    pixels = np.asarray(image).astype(np.int64)
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()
    assert np.abs(pixels[..., 0] - expected).max() <= 1, "not scaled to 8 bits"


def test_16_bit_grayscale_png_is_scaled_not_clipped(tmp_path):
    path = tmp_path / "gray16.png"
    Image.fromarray(GRADIENT16.astype(np.uint16)).save(path)
    assert Image.open(path).mode == "I;16"
    image = load_rgb(path)
    _gray(np.rint(GRADIENT16 / 257), image)
    assert (np.asarray(image) == 255).mean() < 0.01  # not the "all white" of a plain convert


def test_32_bit_integer_mode_i(tmp_path):
    path = tmp_path / "gray32.tif"
    Image.fromarray(GRADIENT16.astype(np.int32)).save(path)
    assert Image.open(path).mode == "I"
    _gray(np.rint(GRADIENT16 / 257), load_rgb(path))


def test_float_mode_f(tmp_path):
    path = tmp_path / "float.tif"
    values = (GRADIENT16 / 65535).astype(np.float32)  # floats in [0, 1]
    Image.fromarray(values).save(path)
    assert Image.open(path).mode == "F"
    _gray(np.rint(values * 255), load_rgb(path))


def test_gray_with_alpha_la(tmp_path):
    path = tmp_path / "la.png"
    gray = (np.arange(16 * 16).reshape(16, 16) % 256).astype(np.uint8)
    Image.merge("LA", [Image.fromarray(gray), Image.new("L", (16, 16), 40)]).save(path)
    assert Image.open(path).mode == "LA"
    _gray(gray, load_rgb(path))


def test_palette_with_transparency(tmp_path):
    path = tmp_path / "palette.png"
    image = Image.new("P", (8, 8), 1)
    image.putpalette([0, 0, 0, 200, 10, 10, 10, 200, 10] + [0] * (256 * 3 - 9))
    image.putpixel((0, 0), 0)
    image.putpixel((1, 0), 2)
    image.info["transparency"] = 0
    image.save(path, transparency=0)
    assert Image.open(path).mode == "P" and "transparency" in Image.open(path).info
    rgb = load_rgb(path)
    assert rgb.mode == "RGB"
    assert rgb.getpixel((4, 4)) == (200, 10, 10) and rgb.getpixel((1, 0)) == (10, 200, 10)


@pytest.mark.parametrize("suffix", [".jpg", ".tif"])
def test_cmyk(tmp_path, suffix):
    path = tmp_path / f"cmyk{suffix}"
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(path)  # pure red in print colours
    assert Image.open(path).mode == "CMYK"
    r, g, b = load_rgb(path).getpixel((4, 4))
    assert r > 240 and g < 15 and b < 15
