"""Real dataset layouts (RAF-DB, AffectNet, SFEW, folders/CSV), the paper's recipes, the balanced
sampler and every bad-input case, on tiny datasets written by ``fakedata``."""
from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import PIL
import pytest
import torch
from hydra.utils import get_method
from omegaconf import OmegaConf
from PIL import Image
from torch.utils.data import DataLoader

import fakedata
from fakedata import build
from adadf.config import instantiate_node, validate_config
from adadf.config.dataset import DATASET_SCHEMAS
from adadf.data import affectnet
from adadf.data.affectnet import read_affectnet
from adadf.data.folder import read_csv, read_folder
from adadf.data.images import (
    ImageFileDataset,
    UnreadableImage,
    build_image_bundle,
    check_split,
    load_rgb,
)
from adadf.data.index import ImageIndex
from adadf.data.raf import read_raf
from adadf.data.samplers import ClassBalancedSampler
from adadf.data.sfew import read_sfew
from adadf.data.transforms import (
    AtLeastBits,
    eval_transform,
    make_recipe,
    randaugment,
    standard_recipe,
    tencrop_recipe,
    train_transform,
)
from adadf.errors import UserError
from adadf.methods.adadf import resolve_detach_target

SMALL = dict(image_size=32, batch_size=4, num_workers=0)


def one_line_error(excinfo: pytest.ExceptionInfo, *needles: str) -> str:
    message = str(excinfo.value)
    assert "\n" not in message, message
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    return message


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """All four layouts, written once per module (tests that break a layout copy it first)."""
    root = tmp_path_factory.mktemp("data")
    fakedata.write_raf(root / "raf", per_class=2, size=40, test_per_class=1)
    fakedata.write_affectnet(root / "affectnet", per_class=2, size=40, test_per_class=1, extra_contempt=2)
    fakedata.write_sfew(root / "sfew", per_class=2, size=40, test_per_class=1)
    fakedata.write_folder(root / "folder", per_class=2, size=40, test_per_class=1)
    fakedata.write_folder_csv(root / "csv", per_class=2, size=40, test_per_class=1)
    return root


def copy_of(data: Path, name: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(data / name, tmp_path / name))


# ----------------------------------------------------------------------------------------- indexes
def test_raf_index(data):
    root = data / "raf"
    train, test = read_raf(root)
    assert (len(train), len(test)) == (14, 7)
    assert train.class_names == ["Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral"]
    assert train.class_counts() == [2] * 7 and test.class_counts() == [1] * 7
    lines = [line.split() for line in (root / "EmoLabel/list_patition_label.txt").read_text().splitlines()]
    expected_train = [(f"Image/aligned/{n[:-4]}_aligned.jpg", int(label) - 1)
                      for n, label in lines if n.startswith("train")]
    assert list(zip(train.paths, train.labels)) == expected_train  # label-file order, labels 0-based
    assert train.paths[0] == "Image/aligned/train_00001_aligned.jpg"
    assert test.paths[0] == "Image/aligned/test_0001_aligned.jpg"
    assert train.root == root and all(train.absolute(i).is_file() for i in range(len(train)))


def test_affectnet_index_7_and_8_classes(data):
    root = data / "affectnet"
    train8, test8 = read_affectnet(root, 8)
    assert (len(train8), len(test8)) == (18, 8)
    assert train8.class_counts() == [2] * 7 + [4] and test8.class_counts() == [1] * 8
    assert train8.class_names[7] == "Contempt"
    ids = [int(Path(p).stem) for p in train8.paths]
    assert ids == sorted(ids) == list(range(18))  # numeric id order, not string order (10 after 9)
    assert train8.paths[1] == "train_set/images/1.png"  # the RGBA image, stored as PNG
    for path, label in zip(train8.paths, train8.labels):
        ann = root / "train_set/annotations" / f"{Path(path).stem}_exp.npy"
        assert int(np.load(ann).item()) == label
    train7, test7 = read_affectnet(root, 7)
    assert (len(train7), len(test7)) == (14, 7)
    assert 7 not in train7.labels and train7.class_names == train8.class_names[:7]
    assert test8.paths[0].startswith("val_set/images/")


def test_affectnet_index_cache(data, tmp_path, monkeypatch):
    root = copy_of(data, "affectnet", tmp_path)
    for stale in root.glob(".adadf-index-*"):
        stale.unlink()
    first = read_affectnet(root, 8)
    cache = root / ".adadf-index-train_set.json"
    saved = json.loads(cache.read_text())
    assert saved["paths"][0] == "train_set/images/0.jpg"  # relative to the root, never to the cwd
    assert not any(os.path.isabs(p) for p in saved["paths"])

    def no_scan(path):
        raise AssertionError(f"rescanned {path}")

    monkeypatch.setattr(affectnet, "read_label", no_scan)
    moved = Path(shutil.move(str(root), tmp_path / "moved"))  # the cache survives moving the dataset
    again = read_affectnet(moved, 8)
    assert again[0].paths == first[0].paths and again[0].labels == first[0].labels
    assert again[0].root == moved

    # A changed listing invalidates the cache.
    monkeypatch.undo()
    shutil.copy(moved / "train_set/images/2.jpg", moved / "train_set/images/100.jpg")
    np.save(moved / "train_set/annotations/100_exp.npy", np.array("3"))
    train, _ = read_affectnet(moved, 8)
    assert len(train) == 19 and train.paths[-1] == "train_set/images/100.jpg" and train.labels[-1] == 3


def test_affectnet_cache_falls_back_when_root_not_writable(data, tmp_path):
    root = copy_of(data, "affectnet", tmp_path)
    for stale in root.glob(".adadf-index-*"):
        stale.unlink()
    (root / ".adadf-index-train_set.json").mkdir()  # cannot be written or read, even by root
    fallback = tmp_path / "cache"
    read_affectnet(root, 7, cache_dir=fallback)
    cached = list(fallback.glob("*-train_set.json"))
    assert len(cached) == 1 and json.loads(cached[0].read_text())["paths"][0] == "train_set/images/0.jpg"


def test_sfew_index(data):
    train, test = read_sfew(data / "sfew")
    assert train.class_names == ["Angry", "Disgust", "Fear", "Happy", "Neutral", "Sad", "Surprise"]
    assert (len(train), len(test)) == (14, 7)
    assert train.labels == sorted(train.labels)  # class order, then file name
    assert train.paths[:2] == ["Train/Angry/ang_000.png", "Train/Angry/ang_001.png"]
    assert test.paths[-1] == "Val/Surprise/sur_000.png"


def test_folder_index_and_csv(data, tmp_path):
    train, test = read_folder(data / "folder")
    assert train.class_names == ["cat", "dog", "owl"] and train.class_counts() == [2, 2, 2]
    assert train.paths[0] == "train/cat/000.jpg" and test.paths[-1] == "test/owl/000.jpg"

    root = data / "csv"
    train = read_csv(root / "train.csv", root, None)
    rows = pd.read_csv(root / "train.csv")
    assert train.class_names == ["cat", "dog", "owl"]
    assert train.paths == rows["path"].tolist()
    assert [train.class_names[i] for i in train.labels] == rows["label"].tolist()
    ordered = read_csv(root / "train.csv", root, ["owl", "dog", "cat"])
    assert [ordered.class_names[i] for i in ordered.labels] == rows["label"].tolist()

    numeric = fakedata.write_folder_csv(tmp_path / "num", integer_labels=True)
    index = read_csv(numeric / "train.csv", numeric, None)
    assert index.class_names == ["0", "1", "2"]
    assert index.labels == pd.read_csv(numeric / "train.csv")["label"].tolist()


# ----------------------------------------------------------------------------------------- recipes
def test_recipes_follow_the_paper_and_scale():
    raf = standard_recipe()
    assert (raf.resize, raf.resize_mode, raf.ten_crop, raf.randaugment) == (224, "square", False, "rand-m5-n3-mstd0.5")
    assert raf.randaugment_hparams() == {"translate_const": 117, "img_mean": (124, 116, 104)}
    assert (raf.flip_p, raf.erasing_p, raf.erasing_scale) == (0.5, 0.5, (0.02, 0.25))
    assert raf.mean == (0.485, 0.456, 0.406) and raf.std == (0.229, 0.224, 0.225)
    sfew = tencrop_recipe()
    assert (sfew.resize, sfew.image_size, sfew.resize_mode, sfew.num_crops) == (256, 224, "shorter", 10)
    assert sfew.randaugment == "rand-m3-n5-mstd0.5"
    half = make_recipe("tencrop", 112)
    assert (half.resize, half.image_size) == (128, 112)
    with pytest.raises(UserError) as err:
        make_recipe("fancy", 224)
    one_line_error(err, "dataset.recipe=fancy", "standard")


def test_transform_shapes():
    image = fakedata.make_image(1, (60, 48), np.random.default_rng(0))
    for recipe, shape in ((make_recipe("standard", 32), (3, 32, 32)), (make_recipe("tencrop", 32), (10, 3, 32, 32))):
        assert train_transform(recipe)(image).shape == shape
        out = eval_transform(recipe)(image)
        assert out.shape == shape and out.dtype == torch.float32
    # Ten-crop eval: crops of the resized image (shorter side 37), normalised.
    crops = eval_transform(make_recipe("tencrop", 32))(image)
    assert torch.allclose(crops[5], crops[1].flip(-1), atol=1e-6)  # crops of the mirrored image: its
    assert not torch.allclose(crops[0], crops[1])  # top-left is the top-right crop, mirrored


def test_posterize_keeps_at_least_one_bit():
    """timm's Posterize at magnitude < 2.5 asks for 0 bits, which Pillow >= 13 rejects."""
    image = fakedata.make_image(2, 24, np.random.default_rng(0))
    ra = randaugment(tencrop_recipe(24))
    (op,) = [op for op in ra.ops if op.name == "Posterize"]
    assert isinstance(op.level_fn, AtLeastBits)
    op.prob, op.magnitude, op.magnitude_std = 1.0, 0, 0  # the worst case: level 0 -> 0 bits
    assert op.level_fn.level_fn(0, op.hparams) == (0,)
    out = op(image)
    assert out.size == image.size and len(np.unique(np.asarray(out))) > 1  # 1 bit kept, not a black image
    if int(PIL.__version__.split(".")[0]) >= 13:
        op.level_fn = op.level_fn.level_fn  # timm's own level mapping: the trap
        with pytest.raises(ValueError):
            op(image)
    # The whole SFEW recipe runs (Posterize is drawn often with 5 ops per crop).
    transform = train_transform(tencrop_recipe(24))
    np.random.seed(0)
    for _ in range(40):
        assert transform(image).shape == (10, 3, 24, 24)


# ------------------------------------------------------------------------------------- loaders
def test_raf_bundle_and_val_split(data):
    bundle = build("raf", root=str(data / "raf"), **SMALL)
    images, labels = next(iter(bundle.train_loader))
    assert images.shape == (4, 3, 32, 32) and labels.dtype == torch.int64
    assert len(bundle.train_loader) == 14 // 4 and bundle.num_crops == 1
    assert len(bundle.test_loader.dataset) == 7 and len(bundle.clean_train_loader.dataset) == 14
    held = build("raf", root=str(data / "raf"), val_fraction=0.5, **SMALL)
    assert len(held.val_loader.dataset) == 7 and len(held.clean_train_loader.dataset) == 7


def test_sfew_loader_yields_ten_crops(data):
    bundle = build("sfew", root=str(data / "sfew"), **SMALL)
    assert bundle.num_crops == 10
    train_images, train_labels = next(iter(bundle.train_loader))
    assert train_images.shape == (4, 10, 3, 32, 32) and train_labels.shape == (4,)
    test_images, _ = next(iter(bundle.test_loader))
    assert test_images.shape == (4, 10, 3, 32, 32)
    assert next(iter(bundle.clean_train_loader))[0].shape == (4, 10, 3, 32, 32)


def test_grayscale_and_rgba_become_rgb(data):
    root = data / "affectnet/train_set/images"
    assert Image.open(root / "0.jpg").mode == "L" and Image.open(root / "1.png").mode == "RGBA"
    assert load_rgb(root / "0.jpg").mode == "RGB" and load_rgb(root / "1.png").mode == "RGB"
    bundle = build("affectnet8", root=str(data / "affectnet"), balanced=False, **SMALL)
    dataset = bundle.clean_train_loader.dataset
    assert dataset[0][0].shape == dataset[1][0].shape == (3, 32, 32)


def test_affectnet_balanced_sampler_in_loader(data):
    bundle = build("affectnet8", root=str(data / "affectnet"), **SMALL)
    sampler = bundle.train_loader.sampler
    assert isinstance(sampler.sampler, ClassBalancedSampler)  # in the recorder of the delivery order
    assert len(sampler) == 16 and len(bundle.train_loader) == 4  # min count 2 x 8 classes
    labels = torch.cat([y for _, y in bundle.train_loader])
    assert torch.bincount(labels, minlength=8).tolist() == [2] * 8


def test_balanced_sampler_draws_and_reseeds():
    labels = [0] * 10 + [1] * 3 + [2] * 5
    sampler = ClassBalancedSampler(labels, num_classes=3, seed=7)
    assert len(sampler) == 9
    epoch1, epoch2 = list(sampler), list(sampler)
    for order in (epoch1, epoch2):
        assert len(set(order)) == 9  # without replacement
        assert sorted(labels[i] for i in order) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert epoch1 != epoch2  # a new draw every epoch
    assert list(ClassBalancedSampler(labels, num_classes=3, seed=7)) == epoch1  # deterministic in the seed
    assert list(ClassBalancedSampler(labels, num_classes=3, seed=8)) != epoch1
    sampler.set_epoch(4)
    fourth = list(sampler)
    sampler.set_epoch(5)
    assert list(sampler) != fourth
    resumed = ClassBalancedSampler(labels, num_classes=3, seed=7)
    resumed.set_epoch(4)
    assert list(resumed) == fourth  # resume draws what the uninterrupted run drew
    with pytest.raises(UserError) as err:
        ClassBalancedSampler([0, 0, 2], num_classes=3, class_names=["a", "b", "c"])
    one_line_error(err, "class b has no training images")


def test_pipeline_choice(data, tmp_path, monkeypatch):
    monkeypatch.setenv("ADADF_CACHE_DIR", str(tmp_path))  # where the cached pipelines keep images
    # the same builder routes to adadf.data.fast, which leaves the batch stage to the device
    for name in ("device", "small_first"):
        cached = build("raf", root=str(data / "raf"), pipeline=name, **SMALL)
        assert cached.train_batch_transform is not None and cached.num_classes == 7 and cached.pipeline == name
    with pytest.raises(UserError) as err:
        build("raf", root=str(data / "raf"), pipeline="turbo", **SMALL)
    one_line_error(err, "dataset.pipeline='turbo'", "reference")
    with pytest.raises(UserError) as err:
        build("raf", root=str(data / "raf"), verify_images="maybe", **SMALL)
    one_line_error(err, "dataset.verify_images='maybe'")


# ------------------------------------------------------------------------------------ bad input
def _edit_raf_labels(root: Path, edit) -> Path:
    path = root / "EmoLabel/list_patition_label.txt"
    path.write_text(edit(path.read_text()))
    return path


@pytest.mark.parametrize(
    "edit,needles",
    [
        (lambda t: t.replace("train_00003.jpg", "train_00003.jpg extra", 1), [":3:", "expected '<name> <label 1..7>'"]),
        (lambda t: "\n".join(line if i != 4 else line.split()[0] + " seven" for i, line in enumerate(t.splitlines())),
         [":5:", "got 'train_00005.jpg seven'"]),
        (lambda t: "\n".join(line.split()[0] + " 8" if i == 1 else line for i, line in enumerate(t.splitlines())),
         [":2:", "label 8 out of range 1..7"]),
        (lambda t: "\n".join(line.split()[0] + " 0" if i == 1 else line for i, line in enumerate(t.splitlines())),
         [":2:", "label 0 out of range"]),
        (lambda t: t + "train_00001.jpg 1\n", ["duplicate name 'train_00001.jpg' (first on line 1)"]),
        (lambda t: t + "val_0001.jpg 1\n", [":22:", "neither 'train' nor 'test'"]),
        (lambda t: "".join(line for line in t.splitlines(True) if not line.startswith("test")),
         ["no 'test_*' lines", "test split is empty"]),
    ],
    ids=["fields", "not-integer", "label-8", "label-0", "duplicate", "prefix", "empty-test"],
)
def test_raf_bad_label_file(data, tmp_path, edit, needles):
    root = copy_of(data, "raf", tmp_path)
    path = _edit_raf_labels(root, edit)
    with pytest.raises(UserError) as err:
        read_raf(root)
    one_line_error(err, str(path), *needles)


def test_raf_missing_files(data, tmp_path):
    root = copy_of(data, "raf", tmp_path)
    (root / "Image/aligned/train_00004_aligned.jpg").unlink()
    with pytest.raises(UserError) as err:
        read_raf(root)
    one_line_error(err, "train_00004_aligned.jpg: image not found", "list_patition_label.txt:4")
    (root / "EmoLabel/list_patition_label.txt").unlink()
    with pytest.raises(UserError) as err:
        read_raf(root)
    one_line_error(err, "list_patition_label.txt: label file not found", "raf-basic")


@pytest.mark.parametrize("option", ["raf", "affectnet7", "sfew", "folder"])
def test_missing_root(tmp_path, option):
    with pytest.raises(UserError) as err:
        build(option, root=str(tmp_path / "nowhere"), **SMALL)
    one_line_error(err, f"dataset.root={tmp_path / 'nowhere'}", "no such directory")
    with pytest.raises(UserError) as err:
        build(option, root=None, **SMALL)
    one_line_error(err, "dataset.root is not set")


@pytest.mark.parametrize(
    "value,needles",
    [
        (np.array("9"), ["label 9 out of range 0..7"]),
        (np.array([1, 2]), ["expected a scalar expression label"]),
        (np.array("happy"), ["expected a scalar expression label"]),
        (b"not a numpy file", ["cannot read the label file"]),
    ],
    ids=["range", "shape", "text", "garbage"],
)
def test_affectnet_bad_label(data, tmp_path, value, needles):
    root = copy_of(data, "affectnet", tmp_path)
    path = root / "train_set/annotations/3_exp.npy"
    if isinstance(value, bytes):
        path.write_bytes(value)
    else:
        np.save(path, value)
    (root / "train_set/images/3.jpg").rename(root / "train_set/images/3.jpeg")  # change the listing
    with pytest.raises(UserError) as err:
        read_affectnet(root, 8)
    one_line_error(err, str(path), *needles)


def test_affectnet_missing_parts(data, tmp_path):
    root = copy_of(data, "affectnet", tmp_path)
    (root / "train_set/images/5.jpg").unlink()
    with pytest.raises(UserError) as err:
        read_affectnet(root, 8)
    one_line_error(err, "train_set/images/5.jpg: image not found", "annotations/5_exp.npy")
    shutil.rmtree(root / "train_set")
    with pytest.raises(UserError) as err:
        read_affectnet(root, 8)
    one_line_error(err, "train_set: split folder not found")
    with pytest.raises(UserError) as err:
        read_affectnet(root, 6)
    one_line_error(err, "dataset.num_classes=6")


def test_affectnet_empty_split(data, tmp_path):
    root = copy_of(data, "affectnet", tmp_path)
    for f in (root / "val_set/annotations").iterdir():
        f.unlink()
    with pytest.raises(UserError) as err:
        read_affectnet(root, 8)
    one_line_error(err, "val_set/annotations", "val_set split is empty")


def test_sfew_unexpected_missing_and_empty_folders(data, tmp_path):
    root = copy_of(data, "sfew", tmp_path)
    (root / "Val/Contempt").mkdir()
    with pytest.raises(UserError) as err:
        read_sfew(root)
    one_line_error(err, "Val/Contempt: unexpected class folder 'Contempt'", "Angry, Disgust")
    (root / "Val/Contempt").rmdir()
    shutil.rmtree(root / "Val")
    with pytest.raises(UserError) as err:
        read_sfew(root)
    one_line_error(err, "Val: split folder not found")
    shutil.rmtree(root / "Train/Fear")
    with pytest.raises(UserError) as err:
        read_sfew(root)
    one_line_error(err, "Train/Fear: class folder missing")
    root2 = copy_of(data, "sfew", tmp_path / "b")
    for d in (root2 / "Val").iterdir():
        for f in d.iterdir():
            f.unlink()
    (root2 / "Val/Angry/notes.txt").write_text("not an image")  # skipped, not an image
    with pytest.raises(UserError) as err:
        read_sfew(root2)
    one_line_error(err, "Val: no images: the Val split is empty")


def test_folder_bad_inputs(data, tmp_path):
    root = copy_of(data, "folder", tmp_path)
    with pytest.raises(UserError) as err:
        build("folder", root=str(root), num_classes=7, **SMALL)
    one_line_error(err, "dataset.num_classes=7", "3 classes (cat, dog, owl)")
    (root / "test/fox").mkdir()
    with pytest.raises(UserError) as err:
        read_folder(root)
    one_line_error(err, "test/fox: unexpected class folder 'fox'", "cat, dog, owl")

    csv_root = copy_of(data, "csv", tmp_path)
    bad = csv_root / "bad.csv"
    for text, needles in [
        ("file,label\nimages/train_000.jpg,cat\n", [f"{bad}:1:", "header"]),
        ("path,label\nimages/train_000.jpg,cat\nimages/train_001.jpg\n", [f"{bad}:3:", "expected 'path,label'"]),
        ("path,label\nimages/train_000.jpg,cat\nimages/nope.jpg,dog\n",
         ["images/nope.jpg: image not found", f"{bad}:3"]),
        ("path,label\n", [str(bad), "split is empty"]),
    ]:
        bad.write_text(text)
        with pytest.raises(UserError) as err:
            read_csv(bad, csv_root, None)
        one_line_error(err, *needles)
    bad.write_text("path,label\nimages/train_000.jpg,cow\n")
    with pytest.raises(UserError) as err:
        read_csv(bad, csv_root, ["cat", "dog", "owl"])
    one_line_error(err, f"{bad}:2:", "label 'cow' is not a class")
    with pytest.raises(UserError) as err:
        build("folder", root=str(csv_root), num_classes=3, train_csv="train.csv", **SMALL)
    one_line_error(err, "set both or neither")


def test_unreadable_image_found_up_front(data, tmp_path):
    root = copy_of(data, "raf", tmp_path)
    broken = root / "Image/aligned/test_0002_aligned.jpg"
    broken.write_bytes(broken.read_bytes()[:200])  # truncated JPEG
    with pytest.raises(UnreadableImage) as err:
        build("raf", root=str(root), **SMALL)
    one_line_error(err, str(broken), "cannot read image")
    (root / "Image/aligned/train_00002_aligned.jpg").write_text("not an image")
    with pytest.raises(UnreadableImage) as err:
        build("raf", root=str(root), **SMALL)
    one_line_error(err, "train_00002_aligned.jpg: cannot read image")


def test_unreadable_image_mid_run_is_one_line(data, tmp_path):
    """verify_images=exists skips decoding; a bad file then stops the loader with one line, also
    when raised in a worker process."""
    root = copy_of(data, "folder", tmp_path)
    broken = root / "train/dog/001.jpg"
    broken.write_bytes(b"\xff\xd8\xff garbage")
    bundle = build("folder", root=str(root), num_classes=3, verify_images="exists", **SMALL)
    index = bundle.clean_train_loader.dataset.index
    loader = DataLoader(ImageFileDataset(index, eval_transform(make_recipe("standard", 32))), batch_size=6,
                        num_workers=1)
    with pytest.raises(UnreadableImage) as err:
        next(iter(loader))
    one_line_error(err, f"{broken}: cannot read image")


def test_check_split_catches_bad_labels_and_missing_files(data):
    root = data / "folder"
    bad = ImageIndex(root, ["train/cat/000.jpg"], [3], ["cat", "dog", "owl"])
    with pytest.raises(UserError) as err:
        check_split(bad, "train")
    one_line_error(err, "train/cat/000.jpg: label 3 out of range 0..2")
    missing = ImageIndex(root, ["train/cat/000.jpg", "train/cat/999.jpg"], [0, 0], ["cat", "dog", "owl"])
    with pytest.raises(UserError) as err:
        check_split(missing, "train")
    one_line_error(err, "train/cat/999.jpg: image not found (train split)")
    with pytest.raises(UserError) as err:
        build_image_bundle(ImageIndex(root, [], [], ["cat", "dog", "owl"]), missing, num_classes=3,
                           recipe="standard", image_size=32, pipeline="reference", batch_size=2, num_workers=0,
                           loader_seed=0, val_fraction=0.0, balanced=False, verify_images="auto", label_noise=0.0,
                           noise_seed=None, resident=True, resident_max_share=0.5)
    one_line_error(err, "the train split is empty")


# ------------------------------------------------------------------------------------ configs
@pytest.mark.parametrize(
    "experiment,dataset,threshold,beta,batch",
    [("raf", "build_raf", 0.7, 3, 64), ("affectnet7", "build_affectnet", 0.5, 5, 64),
     ("affectnet8", "build_affectnet", 0.5, 5, 64), ("sfew", "build_sfew", 0.5, 5, 16)],
)
def test_experiment_settings(compose_cfg, experiment, dataset, threshold, beta, batch):
    cfg = compose_cfg([f"experiment={experiment}"])
    assert cfg.name == experiment and cfg.dataset._target_.endswith(dataset)
    assert (cfg.fusion.threshold, cfg.fusion.beta, cfg.fusion.max_weight, cfg.fusion.min_weight) == (
        threshold, beta, 1.0, 0.2)
    assert (cfg.dataset.batch_size, cfg.trainer.epochs, cfg.optimizer.lr, cfg.scheduler.gamma) == (batch, 75, 1e-3, 0.9)
    assert cfg.backbone.checkpoint.endswith("resnet18_msceleb.pth")
    fusion = validate_config(cfg)["fusion"]  # pretrained trunk: the reference's non-detached fused target
    assert resolve_detach_target(fusion, pretrained=cfg.backbone.checkpoint is not None).detach_target is False
    assert cfg.dataset.image_size == 224
    assert cfg.dataset.pipeline == "auto"  # the recipe's exact order: device on CUDA, reference on the CPU
    assert cfg.dataset.num_classes == (8 if experiment == "affectnet8" else 7)
    assert cfg.dataset.balanced == experiment.startswith("affectnet")
    assert cfg.dataset.recipe == ("tencrop" if experiment == "sfew" else "standard")


@pytest.mark.parametrize("option", ["raf", "affectnet7", "affectnet8", "sfew", "folder"])
def test_pipeline_auto_is_every_image_datasets_default(option):
    """The schema default, and no dataset YAML overrides it."""
    assert DATASET_SCHEMAS[option]().pipeline == "auto"
    text = (Path(__file__).resolve().parents[1] / "adadf" / "conf" / "dataset" / f"{option}.yaml").read_text()
    assert "\npipeline:" not in text


def test_pipeline_auto_resolves_by_training_device(data, tmp_path, monkeypatch):
    """auto: the reference recipe (PIL) on the CPU, the exact-order device pipeline on CUDA."""
    from adadf import app
    from adadf.data.images import resolve_pipeline

    assert resolve_pipeline("auto", torch.device("cpu")) == "reference"
    assert resolve_pipeline("auto", torch.device("cuda")) == "device"
    assert resolve_pipeline("auto", "cuda:1") == "device"
    assert resolve_pipeline("reference", torch.device("cuda")) == "reference"
    monkeypatch.setenv("ADADF_CACHE_DIR", str(tmp_path))
    node = OmegaConf.structured(DATASET_SCHEMAS["raf"](root=str(data / "raf"), **SMALL))
    assert node.pipeline == "auto"
    bundle = app.build_data(node, 0, torch.device("cpu"))
    assert bundle.pipeline == "reference" and bundle.train_batch_transform is None  # PIL per image, in workers
    assert type(bundle.train_loader.dataset).__name__ == "ImageFileDataset"


# ------------------------------------------------------------------------------------ run.py
def _contract(run: Path, hydra: bool = True, last: bool = True) -> dict:
    """The run's files; ``last``: whether last.pt stays (trainer.keep_last=auto drops it for sweep jobs)."""
    for name in ("metrics.csv", "summary.json", "checkpoints/best.pt", *([".hydra/config.yaml"] if hydra else [])):
        assert (run / name).is_file(), f"{run / name} missing"
    assert (run / "checkpoints" / "last.pt").is_file() == last
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs_completed"] == 1
    assert len(pd.read_csv(run / "metrics.csv")) == 1
    return summary


def test_every_experiment_runs_through_run_py(run_cli, tmp_path):
    """One multirun over the four experiments, their layouts side by side in one root, starting
    from an MS-Celeb-format ResNet-18 file."""
    root = tmp_path / "all"
    fakedata.write_raf(root, per_class=2, size=40, test_per_class=1)
    fakedata.write_affectnet(root, per_class=2, size=40, test_per_class=1)
    fakedata.write_sfew(root, per_class=2, size=40, test_per_class=1)
    msceleb = fakedata.write_msceleb_checkpoint(tmp_path / "resnet18_msceleb.pth")
    sweep = tmp_path / "sweep"
    proc = run_cli(["-m", "experiment=raf,affectnet7,affectnet8,sfew", f"dataset.root={root}",
                    "dataset.image_size=32", "dataset.batch_size=4", "dataset.num_workers=0", "trainer.epochs=1",
                    "trainer.progress=false", "logger=csv", f"backbone.checkpoint={msceleb}",
                    f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for job, (name, crops, classes) in enumerate([("raf", 1, 7), ("affectnet7", 1, 7), ("affectnet8", 1, 8),
                                                  ("sfew", 10, 7)]):
        run = sweep / str(job)
        summary = _contract(run, last=False)  # a completed sweep job keeps best.pt only
        assert len(summary["best_per_class_acc"]) == classes
        log = (run / "run.log").read_text()
        assert f"({crops} crop" in log, log[-2000:]
        assert "Loaded pretrained resnet18" in log
        assert f"name: {name}" in (run / ".hydra/config.yaml").read_text()


def test_folder_csv_run_from_a_reference_checkpoint(compose_cfg, tmp_path, monkeypatch, caplog):
    """The folder layout (CSV flavour, ten-crop recipe) through the composition root in-process
    (run.py's startup is paid by the multirun above), initialised from an original Ada-DF checkpoint."""
    from adadf.task import train

    root = fakedata.write_folder_csv(tmp_path / "mine", classes=("calm", "tense"), per_class=3, size=36)
    ckpt = fakedata.write_reference_checkpoint(tmp_path / "checkpoint.pth.tar", num_classes=2)
    cfg = compose_cfg(["dataset=folder", f"dataset.root={root}", "dataset.num_classes=2",
                       "dataset.train_csv=train.csv", "dataset.test_csv=test.csv", "dataset.recipe=tencrop",
                       "dataset.image_size=32", "dataset.batch_size=2", "dataset.num_workers=0", "trainer.epochs=1",
                       "trainer.progress=false", "logger=csv", f"backbone.checkpoint={ckpt}"])
    run = tmp_path / "run"
    run.mkdir()
    monkeypatch.chdir(run)  # outside Hydra the run dir is the cwd
    with caplog.at_level(logging.INFO):
        summary = train(cfg)
    assert summary["status"] == "completed"
    _contract(run, hydra=False)
    assert "Imported reference Ada-DF checkpoint" in caplog.text and "(10 crops)" in caplog.text


def test_bad_input_through_run_py(run_cli, data, tmp_path):
    root = copy_of(data, "raf", tmp_path)
    _edit_raf_labels(root, lambda t: t.replace("train_00003.jpg", "train_00003.jpg ?", 1))
    proc = run_cli(["experiment=raf", f"dataset.root={root}", "backbone.checkpoint=null", "logger=csv",
                    f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr + proc.stdout
    hits = [line for line in (proc.stderr + proc.stdout).splitlines() if "list_patition_label.txt:3: expected" in line]
    assert len(hits) == 1, proc.stderr[-2000:]
    assert not (tmp_path / "run" / "checkpoints" / "last.pt").exists()  # stopped before training


# ------------------------------------------------------------------------------------ schemas
def _builder_keywords(builder) -> set[str]:
    """The keywords ``builder`` takes: its own, plus ``build_image_bundle``'s when it passes ``**options`` on."""
    params = inspect.signature(builder).parameters.values()
    own = {p.name for p in params if p.kind is p.KEYWORD_ONLY}
    assert all(p.default is p.empty for p in params), f"{builder.__name__}: a config key with a Python default"
    if any(p.kind is p.VAR_KEYWORD for p in params):
        forwarded = inspect.signature(build_image_bundle).parameters.values()
        own |= {p.name for p in forwarded if p.kind is p.KEYWORD_ONLY}
        assert all(p.default is p.empty for p in forwarded)
    return own


@pytest.mark.parametrize("option", sorted(DATASET_SCHEMAS))
def test_builder_takes_exactly_its_schema(option):
    """The schema is the one place of a key's default: the builder's keywords are the schema's
    fields (without ``_target_``) plus the run's ``loader_seed``, none with a default."""
    schema = DATASET_SCHEMAS[option]
    fields = {f.name for f in dataclasses.fields(schema)} - {"_target_"}
    builder = get_method(schema._target_)
    assert _builder_keywords(builder) == fields | {"loader_seed"}
    options = {f.name: getattr(schema(), f.name) for f in dataclasses.fields(schema)}
    options.pop("_target_")
    inspect.signature(builder).bind(loader_seed=0, **options)  # the signature binds


@pytest.mark.parametrize("option", sorted(DATASET_SCHEMAS))
def test_yaml_option_extends_its_schema(compose_cfg, option):
    """conf/dataset/<option>.yaml composes to exactly its schema's defaults (it holds only comments)."""
    cfg = compose_cfg([f"dataset={option}"])
    assert OmegaConf.to_container(cfg.dataset) == OmegaConf.to_container(OmegaConf.structured(DATASET_SCHEMAS[option]))
    with pytest.raises(Exception, match="no_such_key"):  # a typo'd key fails at compose time
        compose_cfg([f"dataset={option}", "dataset.no_such_key=1"])


@pytest.mark.parametrize("option", sorted(DATASET_SCHEMAS))
def test_debug_fast_composes_with_every_dataset(compose_cfg, option, data, tmp_path, monkeypatch):
    """Issue 12: `debug=fast dataset=folder` failed with "build_folder() got an unexpected keyword
    argument 'train_size'". The smoke config now sets only keys every dataset has."""
    roots = {"raf": "raf", "affectnet7": "affectnet", "affectnet8": "affectnet", "sfew": "sfew", "folder": "folder"}
    overrides = ["debug=fast", f"dataset={option}", "dataset.num_workers=0"]
    if option in roots:
        overrides.append(f"dataset.root={data / roots[option]}")
    if option == "folder":
        overrides.append("dataset.num_classes=3")
    monkeypatch.setenv("ADADF_CACHE_DIR", str(tmp_path))
    cfg = compose_cfg(overrides)
    assert (cfg.dataset.image_size, cfg.dataset.batch_size, cfg.trainer.epochs) == (32, 16, 1)
    if option == "synthetic":
        assert (cfg.dataset.train_size, cfg.dataset.test_size) == (140, 70)
    cfg.dataset.batch_size = 2  # the tiny layouts hold 14-18 training images
    bundle = instantiate_node(cfg.dataset, "dataset", loader_seed=0)
    assert bundle.num_classes == cfg.dataset.num_classes and len(bundle.train_loader) >= 1
