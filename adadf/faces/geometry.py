"""Face alignment: a similarity transform (rotation, uniform scale, translation) that takes the 5
detected landmarks onto a fixed template, then one resampling of the image.

The template is the five-point reference of the ArcFace/InsightFace 112x112 crops (the de-facto
standard for similarity-aligned faces), divided by 112 so that it holds for any output side:

    left eye (0.3419, 0.4616)   right eye (0.6565, 0.4598)   nose (0.5002, 0.6405)
    mouth left (0.3710, 0.8247) mouth right (0.6315, 0.8232)

``padding`` shrinks it towards the centre, p' = 0.5 + (p - 0.5) / (1 + 2 * padding), i.e. adds a
border of ``padding`` x the template's side on every side: more forehead and chin, as in the
loosely cropped RAF-DB faces. The default 0.1 puts the eyes at y = 0.47 and the mouth at 0.77.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

# [5, 2] (x, y) in units of the output side, LANDMARK_NAMES order.
ARCFACE_112 = np.array([
    [38.2946, 51.6963],
    [73.5318, 51.5014],
    [56.0252, 71.7366],
    [41.5493, 92.3655],
    [70.7299, 92.2041],
]) / 112.0
DEFAULT_PADDING = 0.1


def template_points(size: int, padding: float = DEFAULT_PADDING) -> np.ndarray:
    """The template's 5 points [5, 2] in pixels of a ``size`` x ``size`` crop."""
    if size < 1:
        raise ValueError(f"size={size}: expected a positive side in pixels")
    if padding <= -0.5:
        raise ValueError(f"padding={padding}: expected a value > -0.5")
    return (0.5 + (ARCFACE_112 - 0.5) / (1.0 + 2.0 * padding)) * size


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The least-squares similarity taking ``src`` points onto ``dst`` (Umeyama 1991, no reflection).

    src, dst: [N, 2] with N >= 2 -> a 2x3 matrix M with dst ~ M @ [x, y, 1].
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError(f"similarity_transform: expected two [N, 2] arrays, got {src.shape} and {dst.shape}")
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    s, d = src - src_mean, dst - dst_mean
    cov = d.T @ s / len(src)  # [2, 2]
    u, sigma, vt = np.linalg.svd(cov)
    sign = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:  # a reflection would fit better: not a face
        sign[-1] = -1.0
    rotation = u @ np.diag(sign) @ vt
    variance = (s ** 2).sum() / len(src)
    scale = (sigma * sign).sum() / variance if variance > 0 else 1.0
    translation = dst_mean - scale * rotation @ src_mean
    return np.hstack([scale * rotation, translation[:, None]])


def apply_transform(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """points [N, 2] mapped by a 2x3 matrix."""
    points = np.asarray(points, dtype=np.float64)
    return points @ matrix[:, :2].T + matrix[:, 2]


def invert_transform(matrix: np.ndarray) -> np.ndarray:
    """The inverse of a 2x3 affine matrix."""
    linear = np.linalg.inv(matrix[:, :2])
    return np.hstack([linear, -(linear @ matrix[:, 2])[:, None]])


def alignment_matrix(landmarks: np.ndarray, size: int, padding: float = DEFAULT_PADDING) -> np.ndarray:
    """The 2x3 similarity from input pixels to the aligned ``size`` x ``size`` crop."""
    return similarity_transform(landmarks, template_points(size, padding))


def align_face(image: Image.Image, landmarks: np.ndarray, size: int,
               padding: float = DEFAULT_PADDING) -> Image.Image:
    """The ``size`` x ``size`` aligned crop of the face with these landmarks [5, 2].

    A face much larger than the crop is first box-filtered down by an integer factor (PIL's affine
    resampling does not antialias, so a 600 px face warped straight to 112 px would alias).
    Pixels outside the input come out black (what MTCNN-aligned datasets show at image borders).
    """
    to_crop = alignment_matrix(landmarks, size, padding)
    scale = float(np.hypot(to_crop[0, 0], to_crop[1, 0]))  # crop pixels per input pixel
    # Only the part of the input the crop sees: its corners mapped back, plus a margin for the kernel.
    corners = apply_transform(invert_transform(to_crop), [[0, 0], [size, 0], [0, size], [size, size]])
    x0, y0 = np.floor(corners.min(0)).astype(int) - 4
    x1, y1 = np.ceil(corners.max(0)).astype(int) + 4
    region = image.crop((int(x0), int(y0), int(x1), int(y1)))  # outside the image: black
    factor = int(1.0 / scale) if scale < 0.5 else 1
    if factor > 1:
        region = region.reduce(factor)  # region pixel q covers input pixels [q*f, (q+1)*f) + offset
    # input point p = factor * q + (x0, y0)  =>  crop = A (factor q + offset) + t
    linear = to_crop[:, :2] * factor
    shift = to_crop[:, :2] @ np.array([x0, y0], dtype=np.float64) + to_crop[:, 2]
    a, b, c, d, e, f = invert_transform(np.hstack([linear, shift[:, None]])).ravel()
    return region.transform((size, size), Image.Transform.AFFINE, (a, b, c, d, e, f),
                            resample=Image.Resampling.BICUBIC)
