"""Hostile input files and folders (issue 16): decompression bombs, symlink loops and an ``output=``
that is a folder. Each is one warning or one line naming the path, the rest of the work goes on,
and nothing is lost."""
from __future__ import annotations

import logging
import os
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

import fakedata
from adadf.align import AlignSettings, align_tree, walk_tree
from adadf.data.decode import UnreadableImage, check_decodes, image_size, load_rgb
from adadf.data.folder import read_folder
from adadf.errors import UserError
from adadf.predict import list_inputs, predict_command
from conftest import cli_env
from test_faces import checkpoint, predict_cfg  # noqa: F401  (checkpoint: a module fixture)

BOMB_SIDE = 20_000  # 400 M pixels: over twice Pillow's MAX_IMAGE_PIXELS, so an error, not a warning


def write_bomb_png(path: Path, side: int = BOMB_SIDE) -> Path:
    """A valid 1-bit black PNG of ``side`` x ``side`` pixels: ~50 KB on disk, 50 MB decoded as bits
    and 1.2 GB as RGB. Written chunk by chunk (rows of zeros through zlib), never held decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer = zlib.compressobj(9)
    row = bytes(1 + (side + 7) // 8)  # filter byte + packed bits
    body = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1 bit, grayscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


@pytest.fixture
def bomb(tmp_path: Path) -> Path:
    path = write_bomb_png(tmp_path / "bomb.png")
    assert path.stat().st_size < 100_000
    return path


class NoFaceDetector:
    def detect(self, image):
        return []


def warnings_naming(caplog, needle: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and needle in r.getMessage()]


# ------------------------------------------------------------------------------------ decompression bombs
def test_a_bomb_is_an_unreadable_image_naming_the_file(bomb: Path, monkeypatch):
    for read in (load_rgb, check_decodes, image_size):
        with pytest.raises(UnreadableImage) as err:
            read(bomb)
        assert str(err.value).startswith(f"{bomb}: cannot read image") and "pixels" in str(err.value)
        assert "\n" not in str(err.value)
    # Between Pillow's limit and twice it, Pillow only warns; with warnings as errors, the same line.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", BOMB_SIDE**2 * 3 // 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with pytest.raises(UnreadableImage, match="cannot read image"):
            load_rgb(bomb)


def test_predict_skips_a_bomb_and_writes_the_rest(checkpoint: Path, bomb: Path, tmp_path: Path, caplog):  # noqa: F811
    folder = tmp_path / "inputs"
    folder.mkdir()
    bomb.rename(folder / "bomb.png")
    Image.new("RGB", (24, 24), (200, 120, 90)).save(folder / "face.png")
    result = predict_command(predict_cfg(checkpoint, f"input={folder}"), tmp_path / "out")  # faces=auto
    assert result["skipped"] == [str(folder / "bomb.png")] and result["num_predicted"] == 1
    assert pd.read_csv(tmp_path / "out" / "predictions.csv")["path"].tolist() == [str(folder / "face.png")]
    assert len(warnings_naming(caplog, "bomb.png")) == 1


def test_align_reports_a_bomb_and_aligns_the_rest(bomb: Path, tmp_path: Path, caplog):
    tree = tmp_path / "tree"
    tree.mkdir()
    bomb.rename(tree / "bomb.png")
    Image.new("RGB", (40, 30), (90, 90, 90)).save(tree / "plain.png")
    result = align_tree(tree, tmp_path / "out", NoFaceDetector(), AlignSettings(size=16), workers=1, progress=False)
    assert (result["unreadable"], result["aligned"]) == (1, 1)
    report = pd.read_csv(tmp_path / "out" / "align_report.csv").set_index("path")
    assert report.loc["bomb.png", "status"] == "unreadable" and "pixels" in report.loc["bomb.png", "detail"]
    assert (tmp_path / "out" / "plain.png").is_file() and len(warnings_naming(caplog, "bomb.png")) == 1


@pytest.mark.parametrize("verify_images", ["auto", "exists"])
def test_training_on_a_bomb_is_one_line_naming_it(tmp_path: Path, verify_images: str):
    root = fakedata.write_folder(tmp_path / "folder", per_class=2, size=32, test_per_class=1)
    bomb = write_bomb_png(root / "train" / "dog" / "000.jpg")  # a PNG behind a .jpg suffix: decoded by content
    with pytest.raises(UnreadableImage) as err:
        bundle = fakedata.build("folder", root=str(root), num_classes=3, image_size=32, batch_size=2,
                                num_workers=0, verify_images=verify_images)
        for _ in bundle.train_loader:  # exists: the first decode is in training
            pass
    assert str(err.value).startswith(f"{bomb}: cannot read image") and "\n" not in str(err.value)


# ------------------------------------------------------------------------------------ output=
def test_predict_output_that_is_a_folder_fails_before_any_work(tmp_path: Path, cache_dir: Path):
    image = tmp_path / "face.png"
    Image.new("RGB", (24, 24)).save(image)
    taken = tmp_path / "results"
    taken.mkdir()
    # The checkpoint does not exist either: output= is checked first, before anything is loaded.
    cfg = predict_cfg(tmp_path / "missing.pt", f"input={image}", f"output={taken}")
    with pytest.raises(UserError) as err:
        predict_command(cfg, tmp_path / "run")
    assert str(err.value).startswith(f"output={taken}: ") and "a folder" in str(err.value)
    assert "expected" in str(err.value) and "\n" not in str(err.value)
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match=r"output=.*file/p\.csv: .*not a folder"):
        predict_command(predict_cfg(tmp_path / "missing.pt", f"input={image}", f"output={tmp_path / 'file/p.csv'}"),
                        tmp_path / "run")

    proc = subprocess.run([sys.executable, "-m", "adadf.predict", f"checkpoint={tmp_path / 'missing.pt'}",
                           f"input={image}", f"output={taken}", f"hydra.run.dir={tmp_path / 'cli'}"],
                          cwd=tmp_path, env=cli_env(cache_dir), capture_output=True, text=True, timeout=300)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode != 0 and "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"output={taken}: ") and list(taken.iterdir()) == []


# ------------------------------------------------------------------------------------ symlink loops
def make_loops(folder: Path) -> dict[str, Path]:
    """In ``folder``: a self-link ``self.png``, two links pointing at each other (``ping.png``,
    ``pong.png``) and folder links back to the folder (``again``) and above it (``up``)."""
    links = {"self.png": "self.png", "ping.png": "pong.png", "pong.png": "ping.png", "again": ".", "up": ".."}
    for name, target in links.items():
        os.symlink(target, folder / name)
    return {name: folder / name for name in links}


def assert_warned_once_each(caplog, paths) -> None:
    for path in paths:
        named = warnings_naming(caplog, f"{path}:")
        assert len(named) == 1 and "symbolic link loop" in named[0], (path, named)


def test_predict_input_folder_with_link_loops(tmp_path: Path, caplog):
    folder = tmp_path / "inputs"
    (folder / "sub").mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for path in (folder / "a.png", folder / "sub" / "b.png", elsewhere / "c.png"):
        Image.new("RGB", (8, 8)).save(path)
    os.symlink(elsewhere, folder / "linked")  # a link to a folder that is no loop: followed
    loops = make_loops(folder / "sub")
    with caplog.at_level("WARNING"):
        found = list_inputs(folder)
    assert found == [(folder / "a.png").absolute(), (folder / "linked" / "c.png").absolute(),
                     (folder / "sub" / "b.png").absolute()]
    assert_warned_once_each(caplog, loops.values())


def test_align_walk_with_link_loops(tmp_path: Path, caplog):
    tree = tmp_path / "tree"
    (tree / "Train" / "Happy").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tree / "Train" / "Happy" / "a.png")
    loops = make_loops(tree / "Train")
    with caplog.at_level("WARNING"):
        images, others, folders = walk_tree(tree)
    assert (images, others, folders) == (["Train/Happy/a.png"], [], ["Train", "Train/Happy"])
    assert_warned_once_each(caplog, loops.values())
    out = tmp_path / "out"  # a link into align's own output is never walked (it would align its output)
    (out / "Train").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(out / "Train" / "old.png")
    os.symlink(out / "Train", tree / "mirror")
    with caplog.at_level("WARNING"):
        assert walk_tree(tree, avoid=out)[0] == ["Train/Happy/a.png"]
    assert len(warnings_naming(caplog, f"{tree / 'mirror'}: leads into {out}")) == 1
    with pytest.raises(UserError, match=r"input=.*self\.png: a symbolic link loop; expected"):
        align_tree(loops["self.png"], tmp_path / "out", NoFaceDetector(), AlignSettings())
    with pytest.raises(UserError, match=r"input=.*self\.png: a symbolic link loop; expected"):
        list_inputs(loops["self.png"])


def test_dataset_folder_with_link_loops(tmp_path: Path, caplog):
    root = fakedata.write_folder(tmp_path / "folder", per_class=2, size=32, test_per_class=1)
    loops = {**make_loops(root / "train"), "cat/self.jpg": root / "train" / "cat" / "self.jpg"}
    os.symlink("self.jpg", root / "train" / "cat" / "self.jpg")
    with caplog.at_level("WARNING"):
        train, test = read_folder(root)
    assert train.class_names == ["cat", "dog", "owl"] and len(train) == 6 and len(test) == 3
    assert "train/cat/self.jpg" not in train.paths
    assert_warned_once_each(caplog, loops.values())
