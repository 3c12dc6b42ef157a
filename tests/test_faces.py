"""adadf.faces on real faces shipped with scikit-image: MTCNN detection and landmarks, the
similarity alignment, annotation and video frames in and out. Nothing is downloaded."""
from __future__ import annotations

import re
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adadf.faces import (
    ARCFACE_112, DetectorUnavailable, FaceDetector, align_face, alignment_matrix, apply_transform,
    face_crops, pick_face, similarity_transform, template_points, wants_detection,
)
from adadf.errors import UserError
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


def test_mtcnn_on_images_smaller_than_a_face(detector):
    for size in ((1, 1), (12, 12), (300, 8)):  # facenet-pytorch itself raises on these
        assert detector.detect(Image.new("RGB", size, (128, 128, 128))) == []


def test_mtcnn_finds_both_faces_of_a_composite(detector):
    faces = detector.detect(two_faces())
    assert len(faces) == 2
    left, right = sorted(faces, key=lambda f: f.box[0])
    assert right.area > 1.5 * left.area  # the 1.4x copy
    assert pick_face(faces, "largest") is right
    assert pick_face(faces, "confident") is max(faces, key=lambda f: f.score)


def test_mtcnn_max_side_detects_on_a_smaller_copy(detector):
    """A 1536 px photo searched at 512 px: the same face, coordinates in the input's pixels."""
    big = astronaut().resize((1536, 1536), Image.Resampling.BICUBIC)
    full = pick_face(detector.detect(big))
    quick = pick_face(MTCNNDetector(device="cpu", max_side=512).detect(big))
    assert box_overlap(quick.box, full.box) > 0.85
    assert box_overlap(quick.box, [3 * v for v in ASTRONAUT_FACE]) > 0.8
    assert np.abs(quick.landmarks - full.landmarks).max() < 12  # 4 px at the copy's scale
    with pytest.raises(UserError, match="detector.max_side=30"):
        MTCNNDetector(device="cpu", max_side=30)


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



def write_indexed_video(path: Path, frames: int = 30) -> Path:
    """An MP4 with its index (the moov box) in front, as web and phone videos are, so that a cut
    file still opens and declares all ``frames``; each frame is noise (no face)."""
    import av

    rng = np.random.default_rng(0)
    with av.open(str(path), mode="w", format="mp4", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for _ in range(frames):
            image = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    return path


def cut_video(tmp_path: Path, keep: float = 0.6) -> Path:
    """A 30-frame video whose last bytes are gone (a download that broke off)."""
    whole = write_indexed_video(tmp_path / "whole.mp4")
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[: int(whole.stat().st_size * keep)])
    return cut


def test_truncated_video_says_how_many_frames_of_how_many(tmp_path, caplog):
    whole = write_indexed_video(tmp_path / "whole.mp4")
    with caplog.at_level("WARNING"):
        assert len(list(read_frames(whole))) == 30
    assert not caplog.records  # a whole file: no warning
    cut = cut_video(tmp_path)
    assert probe(cut).frames == 30
    with caplog.at_level("WARNING"):
        read = len(list(read_frames(cut, every=2)))
    decoded = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and str(cut) in r.getMessage()]
    assert len(decoded) == 1 and 0 < read < 15, decoded
    match = re.search(r"read (\d+) of the 30 frames", decoded[0])
    assert match and 2 * read - 1 <= int(match.group(1)) <= 2 * read, decoded[0]

# ------------------------------------------------------------------------------------ adadf-predict with faces
PLAIN_COLUMNS = ["path", "prediction", "confidence"]


def face_columns(names, video: bool = False) -> list[str]:
    landmarks = [f"{n}_{a}" for n in ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right") for a in "xy"]
    return ["path", *(["frame", "time_s"] if video else []), "face", "x1", "y1", "x2", "y2", "score", *landmarks,
            "prediction", "confidence", *[f"prob_{n}" for n in names]]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """An adadf checkpoint of an untrained (seeded) 7-class model with a 32 px input, as the trainer
    writes them (model state, class names, the resolved config's dataset and backbone): the face
    path is checked against the model, not for accuracy."""
    import torch

    from adadf.models import AdaDF

    torch.manual_seed(0)
    model = AdaDF(7)
    path = tmp_path_factory.mktemp("faces-model") / "last.pt"
    torch.save({"model": model.state_dict(), "epoch": 1,
                "class_names": ["Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral"],
                "config": {"dataset": {"_target_": "adadf.data.synthetic.build_synthetic", "num_classes": 7,
                                       "image_size": 32},
                           "backbone": {"name": "resnet18"}}}, path)
    return path


def predict_cfg(checkpoint: Path, *overrides: str):
    from hydra import compose, initialize_config_dir

    from conftest import CONF

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("predict", overrides=[f"checkpoint={checkpoint}", "device=cpu", "progress=false",
                                             "detector.device=cpu", *overrides])


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """photos/astronaut.jpg (one face), photos/group/two.png (two), photos/grass.png (none) and an
    unreadable photos/broken.jpg."""
    root = tmp_path / "photos"
    (root / "group").mkdir(parents=True)
    astronaut().save(root / "astronaut.jpg", quality=95)
    two_faces().save(root / "group" / "two.png")
    lfw_images(faces=False, count=1)[0].save(root / "grass.png")
    (root / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    return root


def model_probs(checkpoint: Path, crops: list[Image.Image]):
    """The checkpoint's probabilities for aligned crops, computed here from the library pieces."""
    import torch

    from adadf import inference

    trained = inference.read_checkpoint(checkpoint)
    model = inference.load_model(trained, trained.num_classes)
    transform = inference.image_transform(trained.dataset_config)
    with torch.no_grad():
        return inference.predict_logits(model, torch.stack([transform(c) for c in crops])).softmax(1)


def test_predict_detects_every_face(checkpoint: Path, photos: Path, tmp_path: Path, detector, caplog):
    import pandas as pd
    import torch

    from adadf.predict import predict_command

    result = predict_command(predict_cfg(checkpoint, f"input={photos}", "faces=detect", "annotate=true"),
                             tmp_path / "out")
    frame = pd.read_csv(tmp_path / "out" / "predictions.csv")
    names = [c[len("prob_"):] for c in frame.columns if c.startswith("prob_")]
    assert len(names) == 7 and list(frame.columns) == face_columns(names)
    assert result["skipped"] == [str(photos / "broken.jpg")] and result["no_face"] == [str(photos / "grass.png")]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert sum("broken.jpg" in w for w in warnings) == 1 and sum("grass.png: no face found" in w for w in warnings) == 1

    assert frame["path"].tolist() == [str(photos / "astronaut.jpg")] + [str(photos / "group" / "two.png")] * 2
    assert frame["face"].tolist() == [0, 0, 1]
    one = frame.iloc[0]
    assert box_overlap((one.x1, one.y1, one.x2, one.y2), ASTRONAUT_FACE) > 0.8 and one.score > 0.99
    assert one.left_eye_x < one.right_eye_x and one.left_eye_y < one.mouth_left_y
    two = frame.iloc[1:]
    assert (two.x1.max() > 230) and (two.x1.min() < 100)  # the two copies, left and right
    probs = torch.tensor(frame[[f"prob_{n}" for n in names]].to_numpy(), dtype=torch.float32)
    torch.testing.assert_close(probs.sum(1), torch.ones(3))
    assert frame["prediction"].tolist() == [names[i] for i in probs.argmax(1).tolist()]

    # Each row is the model on that face aligned as adadf-align aligns it (at the model's 32 px).
    from adadf.data.images import load_rgb

    crops = []
    for path in (photos / "astronaut.jpg", photos / "group" / "two.png"):
        image = load_rgb(path)
        crops += [align_face(image, f.landmarks, 32) for f in detector.detect(image)]
    torch.testing.assert_close(probs, model_probs(checkpoint, crops), rtol=0, atol=1e-5)

    # annotate=true: copies with boxes, in the input's layout.
    annotated = tmp_path / "out" / "annotated"
    assert sorted(p.relative_to(annotated).as_posix() for p in annotated.rglob("*") if p.is_file()) == \
        ["astronaut.jpg", "grass.png", "group/two.png"]
    with Image.open(annotated / "astronaut.jpg") as drawn:
        assert drawn.size == (512, 512)
        source = np.asarray(load_rgb(photos / "astronaut.jpg"), dtype=np.int16)
        diff = np.abs(np.asarray(drawn, dtype=np.int16) - source).max(-1)
    x1, y1, x2, y2 = (int(v) for v in ASTRONAUT_FACE)
    assert diff[(y1 + y2) // 2, x1 - 3:x1 + 4].max() > 100  # the box's left edge is drawn
    assert diff[:, :100].mean() < 4  # far from the face, the picture is unchanged (JPEG noise aside)


def test_predict_face_modes(checkpoint: Path, photos: Path, tmp_path: Path):
    import pandas as pd

    from adadf.predict import predict_command, uses_faces

    paths = [photos / "astronaut.jpg"]
    assert uses_faces("auto", paths, 32) and not uses_faces("auto", paths, 300)  # 512 px vs 2 x 300
    assert not uses_faces("none", paths, 32) and uses_faces("detect", [photos / "broken.jpg"], 32)
    # faces=none: today's whole-image rows.
    predict_command(predict_cfg(checkpoint, f"input={paths[0]}", "faces=none"), tmp_path / "none")
    plain = pd.read_csv(tmp_path / "none" / "predictions.csv")
    assert list(plain.columns[:3]) == PLAIN_COLUMNS and len(plain) == 1
    # faces=auto, a photo and a small face crop: one schema for the run, the face rows; the crop
    # (40 px < 2 x 32) is one whole-image row without a detector score.
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    astronaut().save(mixed / "a_photo.png")
    astronaut().crop(ASTRONAUT_FACE).resize((40, 40)).save(mixed / "b_crop.png")
    predict_command(predict_cfg(checkpoint, f"input={mixed}", "faces=auto"), tmp_path / "auto")
    rows = pd.read_csv(tmp_path / "auto" / "predictions.csv")
    assert [Path(p).name for p in rows.path] == ["a_photo.png", "b_crop.png"]
    assert rows.score[0] > 0.99 and np.isnan(rows.score[1]) and np.isnan(rows.left_eye_x[1])
    assert (rows.x1[1], rows.y1[1], rows.x2[1], rows.y2[1]) == (0, 0, 40, 40)
    # ... and auto with no photo keeps today's columns (auto_factor=100: 512 px counts as a crop).
    predict_command(predict_cfg(checkpoint, f"input={mixed}", "auto_factor=100"), tmp_path / "crops")
    assert list(pd.read_csv(tmp_path / "crops" / "predictions.csv").columns[:3]) == PLAIN_COLUMNS


def test_predict_faces_in_worker_threads_keeps_rows_and_order(checkpoint: Path, photos: Path, tmp_path: Path,
                                                              monkeypatch):
    import threading

    import pandas as pd
    import torch

    from adadf import predict

    for i, image in enumerate(lfw_images(faces=True, count=6)):
        image.save(photos / f"lfw_{i}.png")
    threads: set[int] = set()
    torch_threads: set[int] = set()
    call = predict.FacePredictor.__call__

    def recording_call(self, image):
        threads.add(threading.get_ident())
        torch_threads.add(torch.get_num_threads())
        return call(self, image)

    monkeypatch.setattr(predict.FacePredictor, "__call__", recording_call)
    frames = {}
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for workers in (1, 3):
            threads.clear()
            out = tmp_path / f"workers{workers}"
            result = predict.predict_command(predict_cfg(checkpoint, f"input={photos}", "faces=detect",
                                                         "annotate=true", f"workers={workers}"), out)
            assert (len(threads) == 1) if workers == 1 else (len(threads) > 1), threads
            assert torch_threads == {1} and torch.get_num_threads() == 2  # torch_threads=1 inside, restored after
            assert result["skipped"] == [str(photos / "broken.jpg")]
            assert result["no_face"] == [str(photos / "grass.png")]
            assert len(result["annotated"]) == 1 + 6 + 2  # astronaut, six LFW faces, grass and the group
            frames[workers] = pd.read_csv(out / "predictions.csv")
    finally:
        torch.set_num_threads(before)
    assert len(frames[3]) == 1 + 6 + 2 and frames[3]["path"].is_monotonic_increasing  # the input's order
    pd.testing.assert_frame_equal(frames[1], frames[3])
    with pytest.raises(UserError, match="workers=0: expected auto or an integer >= 1"):
        predict.predict_command(predict_cfg(checkpoint, f"input={photos}", "faces=detect", "workers=0"), tmp_path / "w")


def test_predict_faces_bad_input(checkpoint: Path, photos: Path, tmp_path: Path, monkeypatch):
    from adadf.predict import predict_command

    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(200))
    with pytest.raises(UserError) as err:
        predict_command(predict_cfg(checkpoint, f"input={broken}"), tmp_path / "v")
    assert str(err.value).startswith(f"{broken}: cannot decode video") and "\n" not in str(err.value)
    with pytest.raises(UserError, match="none of the 1 images could be read"):
        predict_command(predict_cfg(checkpoint, f"input={photos / 'broken.jpg'}", "faces=detect"), tmp_path / "b")
    with pytest.raises(UserError, match="faces=maybe: expected one of auto, detect, none"):
        predict_command(predict_cfg(checkpoint, f"input={photos}", "faces=maybe"), tmp_path / "m")
    monkeypatch.setitem(sys.modules, "facenet_pytorch", None)
    with pytest.raises(DetectorUnavailable, match="pip install --no-deps facenet-pytorch"):
        predict_command(predict_cfg(checkpoint, f"input={photos}", "faces=detect"), tmp_path / "d")
    assert not (tmp_path / "v").exists() and not (tmp_path / "d").exists()  # nothing written half


def test_predict_truncated_video_warns_and_records_the_counts(checkpoint: Path, tmp_path: Path, caplog):
    """A cut video: the frames that decode are predicted (exit 0), with one warning naming the file
    and both counts, and the counts in the command's result."""
    import pandas as pd

    from adadf.predict import predict_command

    cut = cut_video(tmp_path)
    with caplog.at_level("WARNING"):
        result = predict_command(predict_cfg(checkpoint, f"input={cut}", "faces=none"), tmp_path / "out")
    read = len(pd.read_csv(tmp_path / "out" / "predictions.csv"))
    assert 0 < read < 30 and (result["frames_read"], result["frames_declared"]) == (read, 30)
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and str(cut) in r.getMessage()]
    assert len(warned) == 1 and f"read {read} of the 30 frames" in warned[0], warned
    assert result["incomplete"] == warned[0]
    whole = predict_command(predict_cfg(checkpoint, f"input={tmp_path / 'whole.mp4'}", "faces=none", "every=7"),
                            tmp_path / "whole")
    assert (whole["frames"], whole["frames_read"], whole["frames_declared"], whole["incomplete"]) == (5, 30, 30, None)

def test_predict_video_cli(checkpoint: Path, tmp_path: Path, cache_dir: Path):
    """`python -m adadf.predict input=clip.mp4 every=3 annotate=true`: one row per face of every
    third frame, and an annotated copy of the whole clip."""
    import subprocess

    import pandas as pd

    from conftest import cli_env

    clip = tmp_path / "clip.mp4"
    portrait = astronaut().resize((256, 256))
    with video_writer(clip, fps=Fraction(10)) as write:
        for i in range(10):  # the face drifts right by 4 px a frame
            write(Image.fromarray(np.roll(np.asarray(portrait), 4 * i - 20, axis=1)))
    out = tmp_path / "predict"
    proc = subprocess.run([sys.executable, "-m", "adadf.predict", f"checkpoint={checkpoint}", f"input={clip}",
                           "every=3", "annotate=true", "device=cpu", f"hydra.run.dir={out}"],
                          cwd=tmp_path, env=cli_env(cache_dir), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    frame = pd.read_csv(out / "predictions.csv")
    names = [c[len("prob_"):] for c in frame.columns if c.startswith("prob_")]
    assert list(frame.columns) == face_columns(names, video=True)
    assert frame["frame"].tolist() == [0, 3, 6, 9] and frame["face"].tolist() == [0] * 4
    assert frame["time_s"].tolist() == pytest.approx([0.0, 0.3, 0.6, 0.9])
    assert (frame["path"] == str(clip)).all() and (frame["score"] > 0.95).all()
    assert np.diff(frame["x1"]).mean() == pytest.approx(12, abs=3)  # the box follows the face
    annotated = out / "clip_annotated.mp4"
    info = probe(annotated)
    assert (info.width, info.height) == (256, 256) and len(list(read_frames(annotated))) == 10
