"""Writers of tiny datasets in each real on-disk layout (docs/datasets.md, docs/recipes.md), for tests and benchmarks.

Every writer is deterministic in ``seed``, takes the dataset root to create and returns it, and draws
class-dependent images (a per-class base colour plus noise) so a model can learn a little. Images
are small JPEGs (PNG where the real dataset uses PNG or where an alpha channel must survive).

    write_raf(root, per_class, size)          raf-basic/: EmoLabel/list_patition_label.txt, Image/aligned/
    write_affectnet(root, per_class, size)    affectnet/: {train_set,val_set}/{images,annotations}/
    write_sfew(root, per_class, size)         sfew/: {Train,Val}/<Class>/*.png
    write_folder(root, classes, per_class)    train/<class>/*, test/<class>/*
    write_folder_csv(root, classes, ...)      images/* plus train.csv / test.csv (path,label)
    write_msceleb_checkpoint(path)            {'state_dict': resnet18 state dict with a 1000-class fc}
    write_reference_checkpoint(path, C)       an original Ada-DF checkpoint.pth.tar (spec section 6)
    build(option, **overrides)                a dataset option's builder called with its schema's defaults
"""
from __future__ import annotations

import csv
import dataclasses
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import numpy as np
from hydra.utils import get_method
from PIL import Image

from adadf.config.dataset import DATASET_SCHEMAS
from adadf.config.fields import check_ranges

RAF_CLASSES = ["Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral"]
AFFECTNET_CLASSES = ["Neutral", "Happy", "Sad", "Surprise", "Fear", "Disgust", "Anger", "Contempt"]
SFEW_CLASSES = ["Angry", "Disgust", "Fear", "Happy", "Neutral", "Sad", "Surprise"]


def make_image(label: int, size: int | tuple[int, int], rng: np.random.Generator, mode: str = "RGB") -> Image.Image:
    """A ``size`` (side or (width, height)) image whose mean colour depends on ``label``."""
    width, height = (size, size) if isinstance(size, int) else size
    hue = np.array([(label * 97) % 256, (label * 57 + 80) % 256, (label * 151 + 160) % 256], dtype=np.float32)
    pixels = hue * 0.7 + rng.normal(0, 40, size=(height, width, 3)).astype(np.float32) + 40
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    if mode == "L":
        return image.convert("L")
    if mode == "RGBA":
        alpha = Image.fromarray(rng.integers(128, 256, size=(height, width), dtype=np.uint8), "L")
        image = image.convert("RGBA")
        image.putalpha(alpha)
    return image


def _save(image: Image.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        image.save(path, format="JPEG", quality=90)
    else:
        image.save(path)
    return path


def _labels(num_classes: int, per_class: int, rng: np.random.Generator) -> list[int]:
    """``per_class`` of every class, in a shuffled order (so split files are not sorted by class)."""
    return rng.permutation(np.repeat(np.arange(num_classes), per_class)).tolist()


# ------------------------------------------------------------------------------------------ RAF-DB
def write_raf(root: str | Path, per_class: int = 2, size: int = 48, *, test_per_class: int | None = None,
              seed: int = 0) -> Path:
    """RAF-DB basic: ``EmoLabel/list_patition_label.txt`` (sic) with ``<name> <label 1..7>`` lines
    (all train lines, then all test lines, as in the real file) and ``Image/aligned/<stem>_aligned.jpg``.

    Train names are ``train_00001.jpg``..., test names ``test_0001.jpg``...; labels follow a shuffled
    order with ``per_class`` (``test_per_class``, default ``per_class``) images of each of the 7 classes.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    lines = []
    for split, n, width in (("train", per_class, 5), ("test", test_per_class or per_class, 4)):
        for i, label in enumerate(_labels(7, n, rng), start=1):
            stem = f"{split}_{i:0{width}d}"
            _save(make_image(label, size, rng), root / "Image" / "aligned" / f"{stem}_aligned.jpg")
            lines.append(f"{stem}.jpg {label + 1}\n")
    (root / "EmoLabel").mkdir(parents=True, exist_ok=True)
    (root / "EmoLabel" / "list_patition_label.txt").write_text("".join(lines))
    return root


# --------------------------------------------------------------------------------------- AffectNet
def write_affectnet(root: str | Path, per_class: int = 2, size: int = 48, *, test_per_class: int | None = None,
                    num_labels: int = 8, extra_contempt: int = 0, seed: int = 0) -> Path:
    """AffectNet: ``{train_set,val_set}/images/<id>.jpg`` and ``annotations/<id>_exp.npy``.

    Labels 0..``num_labels``-1 (0 Neutral ... 7 Contempt). Annotations hold the label as a numpy
    string scalar (as the official release does) except every fifth one, a numpy int64 scalar. Each
    split also gets the official release's other annotation files (``_aro``, ``_val``, ``_lnd``), which
    the reader must ignore. The first image of each split is grayscale and the second RGBA (saved as
    ``<id>.png``, since JPEG has no alpha). ``extra_contempt`` adds that many more train images of
    label 7, so the classes are unbalanced. Ids are integers, not zero-padded.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    next_id = 0
    for split, n in (("train_set", per_class), ("val_set", test_per_class or per_class)):
        labels = _labels(num_labels, n, rng)
        if split == "train_set" and extra_contempt:
            labels += [7] * extra_contempt
        for i, label in enumerate(labels):
            ident = str(next_id)
            next_id += 1
            mode, suffix = ("L", ".jpg") if i == 0 else ("RGBA", ".png") if i == 1 else ("RGB", ".jpg")
            _save(make_image(label, size, rng, mode), root / split / "images" / f"{ident}{suffix}")
            ann = root / split / "annotations"
            ann.mkdir(parents=True, exist_ok=True)
            value = np.int64(label) if i % 5 == 4 else np.array(str(label))
            np.save(ann / f"{ident}_exp.npy", value)
            np.save(ann / f"{ident}_aro.npy", np.array("0.1"))
            np.save(ann / f"{ident}_val.npy", np.array("-0.2"))
            np.save(ann / f"{ident}_lnd.npy", np.zeros(136, dtype=np.float64))
    return root


# -------------------------------------------------------------------------------------------- SFEW
def write_sfew(root: str | Path, per_class: int = 2, size: int = 48, *, test_per_class: int | None = None,
               seed: int = 0) -> Path:
    """SFEW 2.0: ``Train/<Class>/*.png`` and ``Val/<Class>/*.png`` for the 7 classes (alphabetical).

    Frames are 5:4 like the real 720x576 ones (``size`` is the height), so the shorter-side resize is
    exercised.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    frame = (size * 5 // 4, size)
    for split, n in (("Train", per_class), ("Val", test_per_class or per_class)):
        for label, name in enumerate(SFEW_CLASSES):
            for i in range(n):
                _save(make_image(label, frame, rng), root / split / name / f"{name[:3].lower()}_{i:03d}.png")
    return root


# ---------------------------------------------------------------------------------- image folders
def write_folder(root: str | Path, classes: Sequence[str] = ("cat", "dog", "owl"), per_class: int = 2,
                 size: int = 40, *, test_per_class: int | None = None, seed: int = 0) -> Path:
    """``train/<class>/*.jpg`` and ``test/<class>/*.jpg``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for split, n in (("train", per_class), ("test", test_per_class or per_class)):
        for label, name in enumerate(classes):
            for i in range(n):
                _save(make_image(label, size, rng), root / split / name / f"{i:03d}.jpg")
    return root


def write_folder_csv(root: str | Path, classes: Sequence[str] = ("cat", "dog", "owl"), per_class: int = 2,
                     size: int = 40, *, test_per_class: int | None = None, integer_labels: bool = False,
                     seed: int = 0) -> Path:
    """``images/<split>_<i>.jpg`` plus ``train.csv`` / ``test.csv`` with a ``path,label`` header.

    Paths in the CSV are relative to ``root``; labels are class names, or indices when
    ``integer_labels``.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    for split, n in (("train", per_class), ("test", test_per_class or per_class)):
        rows = []
        for i, label in enumerate(_labels(len(classes), n, rng)):
            rel = f"images/{split}_{i:03d}.jpg"
            _save(make_image(label, size, rng), root / rel)
            rows.append((rel, label if integer_labels else classes[label]))
        with open(root / f"{split}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "label"])
            writer.writerows(rows)
    return root


# ------------------------------------------------------------------------------------- checkpoints
def write_msceleb_checkpoint(path: str | Path, seed: int = 0) -> Path:
    """A file in the MS-Celeb-1M ResNet-18 format: ``{'state_dict': <timm resnet18, 1000-class fc>}``."""
    import timm
    import torch

    torch.manual_seed(seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": timm.create_model("resnet18", pretrained=False).state_dict()}, path)
    return path


def write_reference_checkpoint(path: str | Path, num_classes: int = 7, seed: int = 0) -> Path:
    """An original Ada-DF ``checkpoint.pth.tar`` (spec section 6), every tensor under all its aliases.

    Naming: ``feature.0|1|4`` = conv1, bn1, layer1; ``branch_k.0|1|2|4`` = layer2, layer3, layer4, fc
    (aliased by ``branch_k_feature.0|1|2`` and ``branch_k_classifier``); ``alpha_k.0`` = attention.
    """
    import torch

    from adadf.models import AdaDF

    torch.manual_seed(seed)
    model = AdaDF(num_classes)
    state: OrderedDict[str, torch.Tensor] = OrderedDict()

    def put(prefix: str, module: torch.nn.Module) -> None:
        for key, value in module.state_dict().items():
            state[f"{prefix}.{key}"] = value

    for i, name in ((0, "conv1"), (1, "bn1"), (4, "layer1")):
        put(f"feature.{i}", getattr(model.trunk, name))
    for k, branch in ((1, model.aux_branch), (2, model.target_branch)):
        for i, name in enumerate(("layer2", "layer3", "layer4")):
            put(f"branch_{k}.{i}", getattr(branch, name))
            put(f"branch_{k}_feature.{i}", getattr(branch, name))
        put(f"branch_{k}.4", branch.fc)
        put(f"branch_{k}_classifier", branch.fc)
    put("alpha_1.0", model.aux_attention)
    put("alpha_2.0", model.target_attention)
    ld = torch.full((num_classes, num_classes), 0.3 / (num_classes - 1)).fill_diagonal_(0.7)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": 3, "state_dict": state, "acc": 50.0, "best_acc": 51.0,
                "optimizer": {"state": {}, "param_groups": []}, "class_distributions": ld}, path)
    return path


def build(option: str, loader_seed: int = 0, **overrides):
    """``dataset=<option>`` built as a run builds it: the schema's defaults with ``overrides``,
    ranges checked (one-line UserError), then the ``_target_`` called with the run's ``loader_seed``."""
    config = DATASET_SCHEMAS[option](**overrides)
    check_ranges(config, "dataset")
    options = dataclasses.asdict(config)
    return get_method(options.pop("_target_"))(loader_seed=loader_seed, **options)
