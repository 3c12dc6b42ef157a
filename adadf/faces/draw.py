"""Boxes and labels drawn on a copy of an image: what ``annotate=true`` writes."""
from __future__ import annotations

from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

PALETTE = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
           (240, 50, 230), (210, 245, 60))


def annotate(image: Image.Image, boxes: Sequence[Sequence[float]], labels: Sequence[str],
             landmarks: Sequence | None = None) -> Image.Image:
    """A copy of ``image`` with each box (x1, y1, x2, y2) outlined and its label above it (inside
    the image), and the landmarks [5, 2] as dots when given. Line and text scale with the image."""
    out = image.convert("RGB")  # a copy, also when the image is RGB already
    draw = ImageDraw.Draw(out)
    side = max(out.width, out.height)
    width = max(2, side // 300)
    font = ImageFont.load_default(size=max(12, side // 40))
    for i, (box, label) in enumerate(zip(boxes, labels)):
        color = PALETTE[i % len(PALETTE)]
        x1, y1, x2, y2 = (float(v) for v in box)
        draw.rectangle((x1, y1, x2, y2), outline=color, width=width)
        if landmarks is not None and landmarks[i] is not None:
            for x, y in landmarks[i]:
                draw.ellipse((x - width, y - width, x + width, y + width), fill=color)
        left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
        tw, th = right - left + 2 * width, bottom - top + 2 * width
        tx = min(max(0.0, x1), max(0.0, out.width - tw))
        ty = y1 - th if y1 - th >= 0 else min(y2, out.height - th)
        draw.rectangle((tx, ty, tx + tw, ty + th), fill=color)
        draw.text((tx + width - left, ty + width - top), label, fill=(255, 255, 255), font=font)
    return out
