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

from adadf.faces.detector import DetectorUnavailable, Face

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install --no-deps facenet-pytorch (make install does it)"


def _load_mtcnn_class():
    try:
        from facenet_pytorch import MTCNN
    except ImportError as err:
        raise DetectorUnavailable(
            f"detector MTCNN: the facenet-pytorch package is missing ({err.name or err}); install it with "
            f"`{INSTALL_HINT}`") from None
    return MTCNN


class MTCNNDetector:
    """:class:`~adadf.faces.detector.FaceDetector` over facenet-pytorch's MTCNN.

    ``min_face_size``: the smallest face side searched for, in pixels (smaller = slower);
    ``thresholds``: the three stages' score thresholds; ``factor``: the image pyramid's scale step;
    ``min_score``: faces below it are dropped (on top of the last stage's threshold);
    ``device``: auto (CUDA when present) | cpu | cuda[:N].
    """

    def __init__(self, min_face_size: int = 20, thresholds: Sequence[float] = (0.6, 0.7, 0.7),
                 factor: float = 0.709, min_score: float = 0.0, device: str = "auto") -> None:
        mtcnn_class = _load_mtcnn_class()
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
        boxes, scores, points = self._mtcnn.detect(image, landmarks=True)
        if boxes is None:
            return []
        faces = [
            Face(box=tuple(float(v) for v in box), score=float(score),
                 landmarks=np.asarray(point, dtype=np.float64).reshape(5, 2))
            for box, score, point in zip(boxes, scores, points)
            if float(score) >= self.min_score
        ]
        return sorted(faces, key=lambda f: -f.score)
