"""RAF-DB (basic): ``raf-basic/EmoLabel/list_patition_label.txt`` + ``Image/aligned/`` (spec section 5)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from adadf.data.bundle import DataBundle
from adadf.data.images import build_image_bundle, list_dir, resolve_root
from adadf.data.index import ImageIndex
from adadf.errors import UserError

CLASS_NAMES = ["Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral"]
LABEL_FILE = "EmoLabel/list_patition_label.txt"  # (sic) the file's name in the release
IMAGE_DIR = "Image/aligned"
LAYOUT = "RAF-DB's raf-basic/ folder (EmoLabel/list_patition_label.txt, Image/aligned/)"


def read_raf(root: str | Path) -> tuple[ImageIndex, ImageIndex]:
    """(train, test) indexes in label-file order. Lines are ``<name> <label 1..7>``; the split is the
    name's prefix (``train_`` / ``test_``); the image is ``Image/aligned/<stem>_aligned.jpg``.

    Malformed lines, labels outside 1..7, duplicate names, missing images and empty splits raise a
    one-line UserError naming the file (and line).
    """
    root = Path(root)
    label_file = root / LABEL_FILE
    if not label_file.is_file():
        raise UserError(f"{label_file}: label file not found; expected {LAYOUT}")
    try:
        lines = label_file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{label_file}: cannot read the label file ({err})") from None
    images = set(list_dir(root / IMAGE_DIR))

    splits: dict[str, tuple[list[str], list[int]]] = {"train": ([], []), "test": ([], [])}
    seen: dict[str, int] = {}
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{label_file}:{number}"
        if len(fields) != 2 or not fields[1].lstrip("-").isdigit():
            raise UserError(f"{where}: expected '<name> <label 1..7>', got {line.strip()!r}")
        name, label = fields[0], int(fields[1])
        if not 1 <= label <= len(CLASS_NAMES):
            raise UserError(f"{where}: label {label} out of range 1..{len(CLASS_NAMES)}")
        split = next((s for s in splits if name.startswith(s)), None)
        if split is None:
            raise UserError(f"{where}: name {name!r} starts with neither 'train' nor 'test'")
        if name in seen:
            raise UserError(f"{where}: duplicate name {name!r} (first on line {seen[name]})")
        seen[name] = number
        image = f"{Path(name).stem}_aligned.jpg"
        if image not in images:
            raise UserError(f"{root / IMAGE_DIR / image}: image not found (listed in {where})")
        splits[split][0].append(f"{IMAGE_DIR}/{image}")
        splits[split][1].append(label - 1)

    for split, (paths, _) in splits.items():
        if not paths:
            raise UserError(f"{label_file}: no '{split}_*' lines: the {split} split is empty")
    return tuple(ImageIndex(root, paths, labels, list(CLASS_NAMES)) for paths, labels in splits.values())


def build_raf(*, root: str | None, loader_seed: int, **options: Any) -> DataBundle:
    """RAF-DB loaders (the ``dataset=raf`` target; ``options``: :class:`adadf.config.dataset.RafConfig`).
    Standard split: 12,271 train / 3,068 test."""
    train, test = read_raf(resolve_root(root, LAYOUT))
    return build_image_bundle(train, test, loader_seed=loader_seed, **options)
