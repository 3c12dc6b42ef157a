"""What every face detector returns, and the one method it must have.

A detector is any object with ``detect(image) -> list[Face]`` (:class:`FaceDetector`); the
configs pick one by ``_target_`` (``adadf.faces.mtcnn.MTCNNDetector`` today), so another one
(a RetinaFace with user-supplied weights, say) is a new class, not a change to the callers.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image

from adadf.errors import UserError

# The order of Face.landmarks: left/right as seen in the image (the subject's right eye is "left_eye").
LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
PICK_POLICIES = ("largest", "confident")


class DetectorUnavailable(UserError):
    """The detector's package (or its weights) is missing: one line saying how to install it."""


@dataclass(frozen=True)
class Face:
    """One detected face, in the input image's pixel coordinates (x right, y down, continuous:
    pixel (i, j) covers [i, i+1) x [j, j+1))."""

    box: tuple[float, float, float, float]  # x1, y1, x2, y2
    score: float  # detector confidence in [0, 1]
    landmarks: np.ndarray  # [5, 2] (x, y), in LANDMARK_NAMES order

    @property
    def area(self) -> float:
        x1, y1, x2, y2 = self.box
        return max(0.0, x2 - x1) * max(0.0, y2 - y1)


@runtime_checkable
class FaceDetector(Protocol):
    """Finds faces in an RGB image. Implementations must be safe to call from several threads
    (the align command runs one detection per worker thread)."""

    def detect(self, image: Image.Image) -> list[Face]:
        """Every face found, most confident first; [] when there is none."""
        ...


def pick_face(faces: list[Face], policy: str = "largest") -> Face:
    """The face a one-face-per-image dataset keeps: the ``largest`` box, or the most ``confident``."""
    if not faces:
        raise ValueError("pick_face: no faces")
    if policy == "largest":
        return max(faces, key=lambda f: (f.area, f.score))
    if policy == "confident":
        return max(faces, key=lambda f: (f.score, f.area))
    raise UserError(f"face policy {policy!r}: expected one of {', '.join(PICK_POLICIES)}")


def build_detector(config: Mapping[str, Any]) -> FaceDetector:
    """The detector a config node names by ``_target_`` (a plain mapping, e.g. from OmegaConf).

    Hydra wraps constructor errors in a multi-line InstantiationException; a UserError inside (a
    missing package) is re-raised as the one line it is.
    """
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    target = config.get("_target_")
    if not target:
        raise UserError("detector._target_: missing; expected e.g. adadf.faces.mtcnn.MTCNNDetector")
    try:
        detector = instantiate(dict(config))
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, UserError):
            raise cause from None
        first = str(cause or err).strip().splitlines()
        raise UserError(f"detector._target_={target}: cannot build the detector "
                        f"({first[-1] if first else type(cause or err).__name__})") from None
    if not isinstance(detector, FaceDetector):
        raise UserError(f"detector._target_={target}: not a face detector (expected a detect(image) method)")
    return detector
