"""adadf.faces on real faces shipped with scikit-image: MTCNN detection and landmarks, the
similarity alignment, annotation and video frames in and out. Nothing is downloaded."""
from __future__ import annotations

import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adadf.faces import (
    ARCFACE_112, DetectorUnavailable, Face, FaceDetector, align_face, alignment_matrix, apply_transform,
    face_crops, pick_face, similarity_transform, template_points, wants_detection,
)
from adadf.faces.draw import annotate
from adadf.faces.mtcnn import MTCNNDetector
from adadf.faces.video import UnreadableVideo, probe, read_frames, video_writer

skimage_data = pytest.importorskip("skimage.data", reason="scikit-image is a test dependency (pip install -e .[test])")

# Where MTCNN finds the astronaut's face in skimage's 512x512 portrait (checked by eye).
ASTRONAUT_FACE = (181, 62, 268, 172)


# ------------------------------------------------------------------------------------ test images
def astronaut() -> Image.Image:
    """Eileen Collins' NASA portrait, 512x512 RGB: one face, about 90x110 px."""
    return Image.fromarray(skimage_data.astronaut())


def lfw_images(faces: bool, count: int, scale: int = 6, pad: int = 40) -> list[Image.Image]:
    """LFW crops from skimage's ``lfw_subset.npy`` (200 grey 25x25 images: the first 100 are faces,
    the last 100 are not), upscaled ``scale`` times and framed by ``pad`` grey pixels so that MTCNN
    sees the whole face: RGB images of side 25 * scale + 2 * pad."""
    subset = np.load(Path(skimage_data.__file__).parent / "lfw_subset.npy")  # [200, 25, 25] in [0, 1]
    chosen = subset[:100] if faces else subset[100:]
    out = []
    for array in chosen[:count]:
        face = Image.fromarray((array * 255).round().astype(np.uint8)).convert("RGB")
        face = face.resize((25 * scale, 25 * scale), Image.Resampling.BICUBIC)
        canvas = Image.new("RGB", (25 * scale + 2 * pad,) * 2, (128, 128, 128))
        canvas.paste(face, (pad, pad))
        out.append(canvas)
    return out


def two_faces() -> Image.Image:
    """The astronaut's face twice, side by side, 460 x 300 px: on the left in grey, on the right
    in colour and 1.4x larger (so a crop tells which face was kept)."""
    face = astronaut().crop((140, 20, 310, 215))  # 170 x 195, the face with a margin
    canvas = Image.new("RGB", (460, 300), (200, 200, 200))
    canvas.paste(face.convert("L").convert("RGB"), (10, 50))
    big = face.resize((235, 262))  # about 1.4x
    canvas.paste(big, (460 - big.width, 300 - big.height))
    return canvas


def box_overlap(a, b) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


@pytest.fixture(scope="module")
def detector() -> MTCNNDetector:
    return MTCNNDetector(device="cpu")


# ------------------------------------------------------------------------------------ detection
def test_mtcnn_finds_the_astronaut_with_ordered_landmarks(detector):
    assert isinstance(detector, FaceDetector)
    faces = detector.detect(astronaut())
    assert len(faces) == 1
    face = faces[0]
    assert face.score > 0.99
    assert box_overlap(face.box, ASTRONAUT_FACE) > 0.8, face.box
    x1, y1, x2, y2 = face.box
    points = face.landmarks
    assert points.shape == (5, 2)
    assert ((points[:, 0] > x1) & (points[:, 0] < x2) & (points[:, 1] > y1) & (points[:, 1] < y2)).all()
    left_eye, right_eye, nose, mouth_left, mouth_right = points
    assert left_eye[0] < nose[0] < right_eye[0] and mouth_left[0] < mouth_right[0]  # image left to right
    assert max(left_eye[1], right_eye[1]) < nose[1] < min(mouth_left[1], mouth_right[1])  # top to bottom
    assert abs(left_eye[1] - right_eye[1]) < 5  # an upright portrait


def test_mtcnn_on_lfw_faces_and_non_faces(detector):
    found = [len(detector.detect(image)) for image in lfw_images(faces=True, count=8)]
    assert found == [1] * 8
    assert [len(detector.detect(image)) for image in lfw_images(faces=False, count=8)] == [0] * 8


def test_mtcnn_finds_both_faces_of_a_composite(detector):
    faces = detector.detect(two_faces())
    assert len(faces) == 2
    left, right = sorted(faces, key=lambda f: f.box[0])
    assert right.area > 1.5 * left.area  # the 1.4x copy
    assert pick_face(faces, "largest") is right
    assert pick_face(faces, "confident") is max(faces, key=lambda f: f.score)


def test_missing_facenet_package_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "facenet_pytorch", None)  # makes `import facenet_pytorch` fail
    with pytest.raises(DetectorUnavailable) as err:
        MTCNNDetector(device="cpu")
    message = str(err.value)
    assert "\n" not in message and "facenet-pytorch" in message and "--no-deps" in message


# ------------------------------------------------------------------------------------ geometry
def test_similarity_transform_recovers_a_known_one():
    angle, scale, shift = np.deg2rad(17.0), 1.7, np.array([12.5, -40.0])
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    src = np.random.default_rng(0).uniform(0, 300, size=(5, 2))
    dst = scale * src @ rotation.T + shift
    matrix = similarity_transform(src, dst)
    np.testing.assert_allclose(matrix, np.hstack([scale * rotation, shift[:, None]]), atol=1e-9)
    np.testing.assert_allclose(apply_transform(matrix, src), dst, atol=1e-9)
    # A mirrored point set is fitted by a rotation, never by a reflection.
    mirrored = similarity_transform(src, src * [-1.0, 1.0])
    assert np.linalg.det(mirrored[:, :2]) > 0


def test_template_padding():
    np.testing.assert_allclose(template_points(112, padding=0.0), ARCFACE_112 * 112)
    padded = template_points(200, padding=0.25)
    np.testing.assert_allclose(padded, (0.5 + (ARCFACE_112 - 0.5) / 1.5) * 200)
    eye_distance = lambda p: p[1, 0] - p[0, 0]  # noqa: E731
    assert eye_distance(padded) == pytest.approx(eye_distance(template_points(200, 0.0)) / 1.5)


def test_align_face_moves_marked_points_onto_the_template():
    """Five white dots drawn where the inverse alignment puts the template: after align_face the
    brightest spot near each template point is that point."""
    size, padding = 96, 0.1
    landmarks = np.array([[200.0, 150.0], [260.0, 170.0], [225.0, 205.0], [195.0, 240.0], [245.0, 255.0]])
    canvas = Image.new("RGB", (480, 400), (0, 0, 0))
    from PIL import ImageDraw

    draw = ImageDraw.Draw(canvas)
    for x, y in landmarks:
        draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=(255, 255, 255))
    crop = np.asarray(align_face(canvas, landmarks, size, padding).convert("L"), dtype=np.float64)
    # The fit is least squares: the dots land where the fitted transform sends them.
    expected = apply_transform(alignment_matrix(landmarks, size, padding), landmarks)
    assert np.abs(expected - template_points(size, padding)).max() < 8  # a face-like point set
    for x, y in expected:
        ys, xs = np.mgrid[0:size, 0:size]
        near = (np.abs(xs + 0.5 - x) < 6) & (np.abs(ys + 0.5 - y) < 6)
        weights = crop * near
        centre = np.array([(weights * (xs + 0.5)).sum(), (weights * (ys + 0.5)).sum()]) / weights.sum()
        assert np.abs(centre - [x, y]).max() < 0.75, (centre, (x, y))


@pytest.mark.parametrize("angle, zoom", [(0, 1.0), (25, 1.0), (-15, 3.0)])
def test_aligned_eyes_land_on_the_template(detector, angle, zoom):
    """Rotate and scale the portrait, align it, and detect again in the crop: the eyes sit on the
    template's eye points (within 4.5 px of a 112 px crop: the 5-point fit is least squares, and
    this face's mouth is lower than the template's) and level."""
    image = astronaut()
    if zoom != 1.0:  # a face much larger than the crop: the reduce-then-warp path
        image = image.resize((round(512 * zoom),) * 2, Image.Resampling.BICUBIC)
    image = image.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=(90, 90, 90))
    face = pick_face(detector.detect(image))
    crop = align_face(image, face.landmarks, 112)
    assert crop.size == (112, 112) and crop.mode == "RGB"
    again = pick_face(detector.detect(crop))
    eyes = again.landmarks[:2]
    assert np.abs(eyes - template_points(112)[:2]).max() < 4.5, eyes
    # ... and where the fitted transform sends the detected eyes (the detector's repeatability).
    mapped = apply_transform(alignment_matrix(face.landmarks, 112), face.landmarks[:2])
    assert np.abs(eyes - mapped).max() < 2.5, (eyes, mapped)
    assert abs(eyes[0, 1] - eyes[1, 1]) < 2.0


def test_face_crops_and_detection_modes(detector):
    crops = face_crops(two_faces(), detector, size=64)
    assert len(crops) == 2 and all(c.crop.size == (64, 64) and c.face is not None for c in crops)
    assert [c.box for c in crops] == [c.face.box for c in crops]
    assert wants_detection("auto", (512, 512), model_size=100) and not wants_detection("auto", (150, 120), 100)
    assert wants_detection("detect", (10, 10), 100) and not wants_detection("none", (4000, 3000), 100)
    from adadf.errors import UserError

    with pytest.raises(UserError, match="faces=sometimes: expected one of auto, detect, none"):
        wants_detection("sometimes", (10, 10), 100)


# ------------------------------------------------------------------------------------ drawing, video
def test_annotate_draws_boxes_and_labels():
    image = Image.new("RGB", (300, 200), (255, 255, 255))
    out = annotate(image, [(50, 60, 150, 180)], ["happy 0.93"], landmarks=[np.array([[80.0, 100.0]] * 5)])
    assert out is not image and image.getpixel((50, 120)) == (255, 255, 255)  # the input is untouched
    pixels = np.asarray(out)
    assert (pixels[120, 50] != 255).any() and (pixels[120, 150] != 255).any()  # both sides of the box
    assert (pixels[100, 80] != 255).any()  # a landmark dot
    assert (pixels[5:60, 50:150] != 255).any()  # the label above the box
    assert (pixels[120, 100] == 255).all()  # inside the box stays clear


def test_video_round_trip(tmp_path):
    frames = [astronaut().rotate(3 * i, fillcolor=(0, 0, 0)).resize((161, 121)) for i in range(10)]
    path = tmp_path / "clip.mp4"
    with video_writer(path, fps=Fraction(10)) as write:
        for frame in frames:
            write(frame)
    assert path.is_file() and not list(tmp_path.glob(".*.tmp"))
    info = probe(path)
    assert (info.width, info.height) == (160, 120) and info.fps == 10  # odd sides cropped to even
    got = list(read_frames(path, every=4))
    assert [f.index for f in got] == [0, 4, 8]
    assert [f.time_s for f in got] == pytest.approx([0.0, 0.4, 0.8])
    for f in got:  # lossy, but the same picture
        original = np.asarray(frames[f.index].crop((0, 0, 160, 120)), dtype=np.float64)
        assert np.abs(np.asarray(f.image, dtype=np.float64) - original).mean() < 12
    assert [f.index for f in read_frames(path, every=4, keep=lambda i: i == 5)] == [0, 4, 5, 8]


def test_video_writer_leaves_nothing_when_interrupted(tmp_path):
    path = tmp_path / "half.mp4"
    with pytest.raises(RuntimeError), video_writer(path, fps=5) as write:
        write(astronaut().resize((64, 64)))
        raise RuntimeError("stopped")
    assert list(tmp_path.iterdir()) == []


def test_undecodable_video_is_one_line(tmp_path):
    garbage = tmp_path / "broken.mp4"
    garbage.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    for call in (lambda: probe(garbage), lambda: list(read_frames(garbage))):
        with pytest.raises(UnreadableVideo) as err:
            call()
        assert "\n" not in str(err.value) and str(err.value).startswith(f"{garbage}: cannot decode video")
