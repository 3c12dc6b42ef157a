"""MTCNN (Zhang et al. 2016), the detector the Ada-DF authors aligned AffectNet and SFEW with, from
``facenet-pytorch`` (its wheel ships the three networks' weights: nothing is downloaded).

facenet-pytorch's metadata pins torch < 2.3 and Pillow < 10.3, though its MTCNN runs on current
ones; it is installed with ``pip install --no-deps facenet-pytorch`` (``make install`` does).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from adadf.errors import UserError
from adadf.faces.detector import DetectorUnavailable, Face

log = logging.getLogger(__name__)

INSTALL_HINT = "`pip install --no-deps facenet-pytorch` (make install does it)"


def _load_mtcnn_class():
    try:
        from facenet_pytorch import MTCNN
    except ImportError as err:
        raise DetectorUnavailable(
            f"detector MTCNN: the facenet-pytorch package is missing ({err.name or err}); install it with "
            f"{INSTALL_HINT}") from None
    return MTCNN


class MTCNNDetector:
    """:class:`~adadf.faces.detector.FaceDetector` over facenet-pytorch's MTCNN.

    ``min_face_size``: the smallest face side searched for, in pixels (smaller = slower);
    ``thresholds``: the three stages' score thresholds; ``factor``: the image pyramid's scale step;
    ``min_score``: faces below it are dropped (on top of the last stage's threshold);
    ``max_side``: larger images are searched on a copy shrunk to this longer side, the boxes and
    landmarks scaled back (the pyramid of a 3000 px photo costs ~10x that of a 1000 px one; faces
    smaller than ``min_face_size`` in the copy are then missed); None: always full size;
    ``device``: auto (CUDA when present) | cpu | cuda[:N].
    """

    def __init__(self, min_face_size: int = 20, thresholds: Sequence[float] = (0.6, 0.7, 0.7),
                 factor: float = 0.709, min_score: float = 0.0, max_side: int | None = None,
                 device: str = "auto") -> None:
        if max_side is not None and int(max_side) < 2 * int(min_face_size):
            raise UserError(f"detector.max_side={max_side}: expected null or at least 2 x min_face_size")
        mtcnn_class = _load_mtcnn_class()
        self.max_side = int(max_side) if max_side is not None else None
        self.min_face_size = int(min_face_size)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.min_score = float(min_score)
        self.device = torch.device(device)
        self._mtcnn = mtcnn_class(keep_all=True, min_face_size=int(min_face_size), thresholds=list(thresholds),
                                  factor=float(factor), select_largest=False, device=self.device).eval()

    def detect(self, image: Image.Image) -> list[Face]:
        """Every face in an RGB image, most confident first."""
        if image.mode != "RGB":
            image = image.convert("RGB")
        scale = 1.0
        if self.max_side is not None and max(image.size) > self.max_side:
            scale = max(image.size) / self.max_side
            image = image.resize((max(1, round(image.width / scale)), max(1, round(image.height / scale))),
                                 Image.Resampling.BILINEAR, reducing_gap=2.0)
        if min(image.size) < self.min_face_size:  # no pyramid level fits (facenet's detect would fail)
            return []
        boxes, scores, points = self._mtcnn.detect(image, landmarks=True)
        if boxes is None:
            return []
        faces = [
            Face(box=tuple(float(v) * scale for v in box), score=float(score),
                 landmarks=np.asarray(point, dtype=np.float64).reshape(5, 2) * scale)
            for box, score, point in zip(boxes, scores, points)
            if float(score) >= self.min_score
        ]
        return sorted(faces, key=lambda f: -f.score)
