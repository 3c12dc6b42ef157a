"""Every face of an image as an aligned crop ready for a classifier (what predict feeds its model)."""
from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from adadf.errors import UserError
from adadf.faces.detector import Face, FaceDetector
from adadf.faces.geometry import DEFAULT_PADDING, align_face

FACE_MODES = ("auto", "detect", "none")


@dataclass
class FaceCrop:
    """One region to classify: a detected face, or the whole image (``face`` None)."""

    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in input pixels
    crop: Image.Image
    face: Face | None = None


def wants_detection(mode: str, image_size: tuple[int, int], model_size: int, auto_factor: float = 2.0) -> bool:
    """``detect``: always; ``none``: never; ``auto``: when the image's shorter side is at least
    ``auto_factor`` x the model's input side (a photo rather than a face crop)."""
    if mode not in FACE_MODES:
        raise UserError(f"faces={mode}: expected one of {', '.join(FACE_MODES)}")
    if mode == "auto":
        return min(image_size) >= auto_factor * model_size
    return mode == "detect"


def whole_image(image: Image.Image) -> FaceCrop:
    return FaceCrop(box=(0.0, 0.0, float(image.width), float(image.height)), crop=image)


def face_crops(image: Image.Image, detector: FaceDetector, size: int,
               padding: float = DEFAULT_PADDING) -> list[FaceCrop]:
    """Every face the detector finds, most confident first, aligned to ``size`` x ``size``."""
    return [FaceCrop(box=face.box, crop=align_face(image, face.landmarks, size, padding), face=face)
            for face in detector.detect(image)]
