"""Faces in the wild: detection, five-point alignment, annotation and video frames.

A low layer: it imports only ``adadf.errors``, ``adadf.atomic`` and third-party packages, so the
entry points (``adadf.align``, ``adadf.predict``) can use it without pulling in training code.
"""
from adadf.faces.crops import FACE_MODES, FaceCrop, face_crops, wants_detection, whole_image
from adadf.faces.detector import (
    LANDMARK_NAMES, DetectorUnavailable, build_detector, Face, FaceDetector, pick_face,
)
from adadf.faces.geometry import (
    ARCFACE_112, DEFAULT_PADDING, align_face, alignment_matrix, apply_transform, similarity_transform,
    template_points,
)

__all__ = [
    "ARCFACE_112", "DEFAULT_PADDING", "FACE_MODES", "LANDMARK_NAMES", "DetectorUnavailable", "Face", "FaceCrop",
    "FaceDetector", "align_face", "alignment_matrix", "apply_transform", "build_detector", "face_crops", "pick_face",
    "similarity_transform", "template_points", "wants_detection", "whole_image",
]
