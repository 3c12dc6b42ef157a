"""Decoding one image file to 8-bit RGB: the only place that opens image files for the data layer.

Both pipelines (``reference`` per image, ``fast``/``device`` through the decoded cache) and the
up-front checks read images here, so a file decodes the same way everywhere and an unreadable one
is always the same one-line :class:`UnreadableImage`.
"""
from __future__ import annotations

import os

from PIL import Image, UnidentifiedImageError

from adadf.errors import UserError

DECODE_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError)


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


def reason(err: BaseException) -> str:
    """The first line of a decoder error (Pillow's messages can span lines)."""
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def to_rgb(image: Image.Image) -> Image.Image:
    """``image`` as 8-bit RGB: grayscale, palette, CMYK and RGBA are converted (alpha dropped)."""
    if image.mode in ("P", "PA", "LA"):
        image = image.convert("RGBA")
    return image.convert("RGB")


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Decode an image file as 8-bit RGB (:func:`to_rgb`); a bad file is a one-line UnreadableImage."""
    try:
        with Image.open(path) as image:
            return to_rgb(image)
    except DECODE_ERRORS as err:
        raise UnreadableImage(f"{path}: cannot read image ({reason(err)})") from None


def check_decodes(path: str | os.PathLike) -> None:
    """Decode ``path`` fully (JPEGs at reduced DCT scale: the whole stream is still read)."""
    try:
        with Image.open(path) as image:
            if image.format == "JPEG":
                image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
            image.load()
    except DECODE_ERRORS as err:
        raise UnreadableImage(f"{path}: cannot read image ({reason(err)})") from None


def larger_side(path: str | os.PathLike) -> int:
    """The larger side of an image, read from its header only."""
    try:
        with Image.open(path) as image:
            return max(image.size)
    except OSError:
        return max(load_rgb(path).size)  # raises the one-line UnreadableImage
