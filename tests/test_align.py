"""`adadf-align`: a face-aligned copy of a dataset tree, on a small tree of real faces."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from adadf.align import AlignSettings, align_tree
from adadf.errors import UserError
from adadf.faces import pick_face, template_points
from adadf.faces.mtcnn import MTCNNDetector
from conftest import ROOT
from test_faces import astronaut, lfw_images, two_faces

SFEW_CLASSES = ["Angry", "Disgust", "Fear", "Happy", "Neutral", "Sad", "Surprise"]
IMAGES = ["Train/Happy/astronaut.jpg", "Train/Happy/two.png", "Val/Sad/lfw0.png", "Val/Sad/lfw1.png",
          "Val/Sad/lfw2.png", "Val/Sad/grass.jpg"]


@pytest.fixture(scope="module")
def detector() -> MTCNNDetector:
    return MTCNNDetector(device="cpu")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """An SFEW-layout tree (Train/<Class>/, Val/<Class>/, all 7 class folders, most empty): the
    astronaut, the two-face composite, 3 LFW faces, an LFW non-face, an unreadable JPEG, a label
    file and a notes file, and a hidden folder that is left alone."""
    root = tmp_path / "sfew"
    for split in ("Train", "Val"):
        for name in SFEW_CLASSES:
            (root / split / name).mkdir(parents=True)
    astronaut().save(root / "Train/Happy/astronaut.jpg", quality=95)
    two_faces().save(root / "Train/Happy/two.png")
    for i, image in enumerate(lfw_images(faces=True, count=3)):
        image.save(root / f"Val/Sad/lfw{i}.png")
    lfw_images(faces=False, count=1)[0].save(root / "Val/Sad/grass.jpg")
    (root / "Val/Sad/broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    (root / "labels.csv").write_text("path,label\nTrain/Happy/astronaut.jpg,3\n")
    (root / "Train/notes.txt").write_text("collected 2024\n")
    (root / ".cache").mkdir()
    (root / ".cache/thumb.png").write_bytes(b"")
    return root


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under root: (size, mtime in ns)."""
    return {p.relative_to(root).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*") if p.is_file()}


def run_align(args: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "adadf.align", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def is_grey(image: Image.Image) -> bool:
    pixels = np.asarray(image, dtype=np.int16)
    return int(np.abs(pixels - pixels.mean(-1, keepdims=True)).max()) <= 2


# ------------------------------------------------------------------------------------ the CLI
def test_align_cli_writes_the_same_layout(tree: Path, tmp_path: Path, detector):
    before = snapshot(tree)
    out = tmp_path / "sfew-aligned"
    proc = run_align([f"input={tree}", f"output={out}", "size=112", "progress=false"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]

    assert snapshot(tree) == before  # the source tree is never written to
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sfew", "sfew-aligned"]  # no outputs/, no .hydra
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == sorted([*IMAGES, "labels.csv", "Train/notes.txt", "align_report.csv"])
    assert all((out / split / name).is_dir() for split in ("Train", "Val") for name in SFEW_CLASSES)
    assert (out / "labels.csv").read_bytes() == (tree / "labels.csv").read_bytes()
    assert not list(out.rglob(".*"))  # no hidden input, no temp file left
    for rel in IMAGES:
        with Image.open(out / rel) as image:
            assert image.size == (112, 112) and image.mode == "RGB"
            assert image.format == ("JPEG" if rel.endswith(".jpg") else "PNG")

    # The portrait is aligned: detected again in the crop, its eyes sit on the template's.
    with Image.open(out / "Train/Happy/astronaut.jpg") as crop:
        eyes = pick_face(detector.detect(crop.convert("RGB"))).landmarks[:2]
    assert np.abs(eyes - template_points(112)[:2]).max() < 4.5
    with Image.open(out / "Train/Happy/two.png") as crop:
        assert not is_grey(crop)  # the larger (colour) face of the composite was kept

    report = pd.read_csv(out / "align_report.csv", keep_default_na=False)
    assert list(report.columns) == ["path", "status", "faces", "written", "detail"]
    rows = {r.path: r for r in report.itertuples()}
    assert sorted(rows) == ["Train/Happy/two.png", "Val/Sad/broken.jpg", "Val/Sad/grass.jpg"]
    assert (rows["Train/Happy/two.png"].status, rows["Train/Happy/two.png"].faces) == ("multiple_faces", 2)
    assert rows["Train/Happy/two.png"].written
    assert (rows["Val/Sad/grass.jpg"].status, rows["Val/Sad/grass.jpg"].written) == ("no_face", True)
    assert (rows["Val/Sad/broken.jpg"].status, rows["Val/Sad/broken.jpg"].written) == ("unreadable", False)
    # One warning line for the unreadable image; the run went on and says what it did.
    log = proc.stdout + proc.stderr
    assert sum("broken.jpg" in line and "WARNING" in line for line in log.splitlines()) == 1
    assert "Traceback" not in log and "aligned 6 images" in log


def test_align_resumes_and_keeps_the_report(tree: Path, tmp_path: Path, detector, caplog):
    out = tmp_path / "aligned"
    settings = AlignSettings(size=64)
    first = align_tree(tree, out, detector, settings, workers=2, progress=False)
    assert (first["aligned"], first["existing"], first["no_face"], first["multiple_faces"], first["unreadable"]) \
        == (6, 0, 1, 1, 1)
    report = (out / "align_report.csv").read_text()
    done = snapshot(out)

    again = align_tree(tree, out, detector, settings, workers=2, progress=False)
    assert (again["aligned"], again["existing"]) == (0, 6)  # only the unreadable one was tried again
    assert (out / "align_report.csv").read_text() == report  # earlier rows kept
    assert {k: v for k, v in snapshot(out).items() if k != "align_report.csv"} == \
        {k: v for k, v in done.items() if k != "align_report.csv"}

    (out / "Val/Sad/grass.jpg").unlink()
    (out / "Val/Sad/lfw1.png").unlink()
    third = align_tree(tree, out, detector, settings, workers=1, progress=False)
    assert (third["aligned"], third["existing"], third["no_face"]) == (2, 4, 1)
    assert (out / "align_report.csv").read_text() == report
    assert (out / "Val/Sad/grass.jpg").is_file() and (out / "Val/Sad/lfw1.png").is_file()


def test_align_skip_policies(tree: Path, tmp_path: Path, detector):
    out = tmp_path / "strict"
    result = align_tree(tree, out, detector, AlignSettings(size=64, multiple="skip", no_face="skip"),
                        workers=2, progress=False, report=tmp_path / "report.csv")
    assert result["aligned"] == 4
    assert not (out / "Train/Happy/two.png").exists() and not (out / "Val/Sad/grass.jpg").exists()
    assert not (out / "align_report.csv").exists()
    report = pd.read_csv(tmp_path / "report.csv").set_index("path")
    assert report.loc["Train/Happy/two.png", "status"] == "multiple_faces"
    assert report.loc["Val/Sad/grass.jpg", "status"] == "no_face"
    assert not report["written"].any()


def test_align_confident_policy_and_a_failed_write(tree: Path, tmp_path: Path, detector, monkeypatch):
    """A detector error or a failed write is reported and the run goes on."""
    import adadf.align as align

    real_save = align.save_image

    def flaky_save(image, path, quality):
        if path.name == "lfw1.png":
            raise OSError("disk full")
        real_save(image, path, quality)

    class FlakyDetector:  # a detector that breaks on one image (the 512 px portrait)
        def detect(self, image):
            if image.width == 512:
                raise RuntimeError("boom")
            return detector.detect(image)

    monkeypatch.setattr(align, "save_image", flaky_save)
    out = tmp_path / "out"
    result = align_tree(tree, out, FlakyDetector(), AlignSettings(size=48, multiple="confident"), workers=2,
                        progress=False)
    assert result["failed"] == 2 and result["aligned"] == 4
    assert not (out / "Val/Sad/lfw1.png").exists() and (out / "Val/Sad/lfw2.png").is_file()
    assert not (out / "Train/Happy/astronaut.jpg").exists()
    report = pd.read_csv(out / "align_report.csv").set_index("path")
    assert report.loc["Val/Sad/lfw1.png", "status"] == "failed" and "disk full" in report.loc["Val/Sad/lfw1.png", "detail"]
    assert report.loc["Train/Happy/astronaut.jpg", "status"] == "failed"
    assert "RuntimeError: boom" in report.loc["Train/Happy/astronaut.jpg", "detail"]
    assert "kept the confident face" in report.loc["Train/Happy/two.png", "detail"]


def test_save_image_is_atomic(tmp_path: Path, monkeypatch):
    """A crash inside Pillow's save leaves neither the file nor a temp file."""
    from adadf.align import save_image

    def broken(self, fp, format=None, **kwargs):
        Path(fp).write_bytes(b"half")
        raise OSError("killed")

    monkeypatch.setattr(Image.Image, "save", broken)
    with pytest.raises(OSError):
        save_image(Image.new("RGB", (8, 8)), tmp_path / "a" / "x.jpg", 95)
    assert list((tmp_path / "a").iterdir()) == []


# ------------------------------------------------------------------------------------ bad input
def one_line_error(proc: subprocess.CompletedProcess) -> str:
    """The error message of a failed run: exactly one line on stderr, no traceback."""
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_output_inside_input_is_one_line(tree: Path, tmp_path: Path):
    before = snapshot(tree)
    line = one_line_error(run_align([f"input={tree}", f"output={tree / 'aligned'}"], cwd=tmp_path))
    assert "inside the input root" in line and str(tree / "aligned") in line
    assert snapshot(tree) == before and not (tree / "aligned").exists()
    line = one_line_error(run_align([f"input={tree}", f"output={tree}"], cwd=tmp_path))
    assert "inside the input root" in line
    with pytest.raises(UserError, match="no such folder"):
        align_tree(tmp_path / "nowhere", tmp_path / "out", None, AlignSettings())
    with pytest.raises(UserError, match="no image files"):
        align_tree(tree / "Train" / "Angry", tmp_path / "out", None, AlignSettings())


def test_missing_detector_package_is_one_line(tree: Path, tmp_path: Path):
    """With facenet-pytorch shadowed by a package that cannot be imported: one line, non-zero exit."""
    shadow = tmp_path / "shadow" / "facenet_pytorch"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('facenet_pytorch is not installed here')\n")
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path / "shadow"), str(ROOT)])}
    line = one_line_error(run_align([f"input={tree}", f"output={tmp_path / 'out'}"], cwd=tmp_path, env=env))
    assert "facenet-pytorch" in line and "pip install --no-deps facenet-pytorch" in line
    assert not (tmp_path / "out").exists()


def test_bad_settings_are_one_line(tree: Path, tmp_path: Path):
    line = one_line_error(run_align([f"input={tree}", f"output={tmp_path / 'o'}", "workers=many"], cwd=tmp_path))
    assert "workers=many: expected auto or an integer" in line
    for settings, expected in ((AlignSettings(size=4), "size=4: expected"),
                               (AlignSettings(multiple="all"), "multiple=all: expected one of largest, confident, skip"),
                               (AlignSettings(no_face="keep"), "no_face=keep: expected one of center, skip"),
                               (AlignSettings(padding=-0.6), "padding=-0.6: expected")):
        with pytest.raises(UserError, match=expected):
            align_tree(tree, tmp_path / "o", None, settings)
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------ kill -9
SLOW_DETECTOR = '''
"""A detector that finds no face, and a save that waits before its rename: a kill lands mid-write."""
import os
import time

_replace = os.replace


def _slow_replace(src, dst, *args, **kwargs):
    if str(dst).endswith(".png"):
        time.sleep(0.3)
    return _replace(src, dst, *args, **kwargs)


os.replace = _slow_replace


class SlowDetector:
    def __init__(self, **options):
        pass

    def detect(self, image):
        return []
'''


class NoFaceDetector:
    def detect(self, image):
        return []


def test_align_killed_mid_run_resumes_without_temps_or_lost_rows(tmp_path: Path):
    """`kill -9` while an image is being written, then a new run: no temp file stays behind and the
    report has one row per image (every image here has no face, so every image has a row)."""
    import signal
    import time

    tree = tmp_path / "tree"
    (tree / "a").mkdir(parents=True)
    names = [f"a/{i:02d}.png" for i in range(24)]
    for i, rel in enumerate(names):
        Image.new("RGB", (32, 24), (10 * i, 80, 160)).save(tree / rel)
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "slowdet.py").write_text(SLOW_DETECTOR)
    out = tmp_path / "out"
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(tmp_path / "plugins"), str(ROOT)])}
    proc = subprocess.Popen([sys.executable, "-m", "adadf.align", f"input={tree}", f"output={out}", "workers=1",
                             "progress=false", "size=16", "detector._target_=slowdet.SlowDetector"],
                            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if len(list(out.glob("a/*.png"))) >= 4 and list(out.glob("a/.*.tmp")):
                break  # some images written, one half-written
            time.sleep(0.02)
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert list(out.glob("a/.*.tmp")) and len(list(out.glob("a/*.png"))) < len(names)  # what kill -9 leaves

    result = align_tree(tree, out, NoFaceDetector(), AlignSettings(size=16), workers=2, progress=False)
    assert result["images"] == len(names) and result["no_face"] + result["existing"] >= len(names)
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]  # no temp file, no journal
    assert sorted(p.relative_to(out).as_posix() for p in out.glob("a/*")) == names
    report = pd.read_csv(out / "align_report.csv", keep_default_na=False)
    assert report["path"].tolist() == names  # one row per image, none lost, none twice
    assert (report["status"] == "no_face").all() and report["written"].all()
