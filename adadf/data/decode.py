"""Decoding one image file to 8-bit RGB: the only place that opens image files for the data layer.

Both pipelines (``reference`` per image, ``fast``/``device`` through the decoded cache) and the
up-front checks read images here, so a file decodes the same way everywhere and an unreadable one
is always the same one-line :class:`UnreadableImage`.
"""
from __future__ import annotations

import os

import numpy as np
from PIL import Image, UnidentifiedImageError

from adadf.errors import UserError, first_line

# A decompression bomb (an image over Pillow's MAX_IMAGE_PIXELS: a small file that would decode to
# gigabytes) is refused by Image.open itself; over the limit but under twice it Pillow only warns,
# unless warnings are errors. Either way the file is unreadable here, like a corrupt one.
DECODE_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError,
                 Image.DecompressionBombWarning)


class UnreadableImage(UserError):
    """An image file that cannot be decoded.

    Raised inside a DataLoader worker, torch re-raises it in the main process as
    ``UnreadableImage("Caught ... Original Traceback ... UnreadableImage: <message>")``; the
    constructor keeps only that last line, so the user still sees one line, not a traceback.
    """

    def __init__(self, message: str) -> None:
        if "Traceback" in message:
            last = [line for line in message.strip().splitlines() if line.strip()][-1]
            message = last.split(f"{type(self).__name__}: ", 1)[-1]
        super().__init__(message)


HIGH_BIT_DEPTH = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def to_8bit_gray(image: Image.Image) -> Image.Image:
    """A high-bit-depth grayscale image (:data:`HIGH_BIT_DEPTH`) scaled to mode ``L``.

    Pillow's own ``convert`` clips these to 0..255 (a 16-bit PNG turns almost white). Here ``I;16*``
    is scaled from 16 bits (/257); ``I`` (32-bit integers, what TIFF and other readers give for
    16-bit data) from 16 bits when every value fits in 16 bits, else from 32; ``F`` from [0, 1] when
    every value lies in it, else taken as 0..255. Negative values become 0.
    """
    values = np.asarray(image).astype(np.float64)  # [H, W]
    if image.mode == "F":
        values = np.nan_to_num(values)
        scale = 255.0 if values.size == 0 or values.max() <= 1.0 else 1.0
    elif image.mode == "I" and values.size and values.max() > 65535:
        scale = 255.0 / (2**32 - 1)
    else:
        scale = 255.0 / 65535.0
    return Image.fromarray(np.clip(np.rint(values * scale), 0, 255).astype(np.uint8), "L")


def to_rgb(image: Image.Image) -> Image.Image:
    """``image`` as 8-bit RGB: high bit depths scaled (:func:`to_8bit_gray`); grayscale, palette
    (with transparency), CMYK and RGBA converted, alpha dropped."""
    if image.mode in HIGH_BIT_DEPTH:
        image = to_8bit_gray(image)
    elif image.mode in ("P", "PA", "LA"):
        image = image.convert("RGBA")
    return image.convert("RGB")


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Decode an image file as 8-bit RGB (:func:`to_rgb`); a bad file is a one-line UnreadableImage."""
    try:
        with Image.open(path) as image:
            return to_rgb(image)
    except DECODE_ERRORS as err:
        raise UnreadableImage(f"{path}: cannot read image ({first_line(err)})") from None


def check_decodes(path: str | os.PathLike) -> None:
    """Decode ``path`` fully (JPEGs at reduced DCT scale: the whole stream is still read)."""
    try:
        with Image.open(path) as image:
            if image.format == "JPEG":
                image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
            image.load()
    except DECODE_ERRORS as err:
        raise UnreadableImage(f"{path}: cannot read image ({first_line(err)})") from None


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) of an image, read from its header only; one line naming an unreadable file."""
    try:
        with Image.open(path) as image:
            return image.size
    except DECODE_ERRORS as err:
        raise UnreadableImage(f"{path}: cannot read image ({first_line(err)})") from None
