"""Users' own data: class-per-folder trees or CSV lists of ``path,label`` (the ``dataset=folder`` target)."""
from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any, Sequence

from adadf.data.bundle import DataBundle
from adadf.data.images import build_image_bundle, is_image_name, list_dir, resolve_root
from adadf.data.index import ImageIndex
from adadf.data.walk import link_loops
from adadf.errors import UserError

log = logging.getLogger(__name__)

FOLDER_LAYOUT = "a folder with train/<class>/ and test/<class>/ (or CSV files of path,label)"


def _class_folders(split_root: Path) -> list[str]:
    """The class folders of a split; symbolic link loops are skipped with a warning each."""
    if not split_root.is_dir():
        raise UserError(f"{split_root}: split folder not found")
    loops = link_loops(split_root)
    return [n for n in list_dir(split_root)
            if not n.startswith(".") and n not in loops and (split_root / n).is_dir()]


def read_class_folders(root: Path, split: str, class_names: Sequence[str], *,
                       require_all: bool = True, folders: Sequence[str] | None = None) -> ImageIndex:
    """``root/split/<class>/*`` as an index: class order = ``class_names``, files sorted by name.

    A folder not in ``class_names`` is an error (naming it), as is a missing class folder when
    ``require_all``. Hidden files and files without an image suffix are skipped (counted in a warning),
    symbolic link loops too (one warning each). ``folders``: the split's class folders, when the
    caller has listed them already.
    """
    split_root = root / split
    folders = _class_folders(split_root) if folders is None else list(folders)
    unexpected = [f for f in folders if f not in class_names]
    if unexpected:
        raise UserError(f"{split_root / unexpected[0]}: unexpected class folder {unexpected[0]!r} "
                        f"(expected {', '.join(class_names)})")
    missing = [c for c in class_names if c not in folders]
    if missing and require_all:
        raise UserError(f"{split_root / missing[0]}: class folder missing (expected {', '.join(class_names)})")
    paths, labels, skipped = [], [], []
    for label, name in enumerate(class_names):
        if name not in folders:
            continue
        loops = link_loops(split_root / name)
        for file in list_dir(split_root / name):
            if file in loops:
                continue
            if is_image_name(file):
                paths.append(f"{split}/{name}/{file}")
                labels.append(label)
            elif not file.startswith("."):
                skipped.append(f"{split}/{name}/{file}")
    if skipped:
        log.warning("%s: skipped %d files without an image suffix (e.g. %s)", split_root, len(skipped), skipped[0])
    if not paths:
        raise UserError(f"{split_root}: no images: the {split} split is empty")
    return ImageIndex(root, paths, labels, list(class_names))


def read_folder(root: str | Path, train: str = "train", test: str = "test") -> tuple[ImageIndex, ImageIndex]:
    """``train/<class>/*`` and ``test/<class>/*``: classes are the train folders, sorted by name; the
    test split may lack a class but may not add one."""
    root = Path(root)
    classes = sorted(_class_folders(root / train))
    if not classes:
        raise UserError(f"{root / train}: no class folders; expected {FOLDER_LAYOUT}")
    return (read_class_folders(root, train, classes, folders=classes),
            read_class_folders(root, test, classes, require_all=False))


def read_csv(path: Path, root: Path, class_names: Sequence[str] | None) -> ImageIndex:
    """A CSV with a header naming ``path`` and ``label`` columns (others ignored). Paths are relative
    to ``root`` (or absolute, inside ``root``); labels are class names or indices 0..C-1.

    With ``class_names`` None, the classes are the sorted distinct labels of this file.
    """
    if not path.is_file():
        raise UserError(f"{path}: CSV file not found")
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise UserError(f"{path}: cannot read the CSV file ({err})") from None
    if not rows or "path" not in rows[0] or "label" not in rows[0]:
        raise UserError(f"{path}:1: expected a header with columns 'path' and 'label'")
    col_path, col_label = rows[0].index("path"), rows[0].index("label")
    entries: list[tuple[int, str, str]] = []
    for number, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) <= max(col_path, col_label) or not row[col_path].strip() or not row[col_label].strip():
            raise UserError(f"{path}:{number}: expected 'path,label', got {','.join(row)!r}")
        entries.append((number, row[col_path].strip(), row[col_label].strip()))
    if not entries:
        raise UserError(f"{path}: no rows: the split is empty")
    if class_names is None:
        values = {label for _, _, label in entries}
        if all(v.isdigit() for v in values):
            class_names = [str(i) for i in range(max(int(v) for v in values) + 1)]
        else:
            class_names = sorted(values)
    class_names = list(class_names)
    by_name = {name: i for i, name in enumerate(class_names)}
    paths, labels = [], []
    for number, rel, value in entries:
        if value in by_name:
            label = by_name[value]
        elif value.isdigit() and int(value) < len(class_names):
            label = int(value)
        else:
            raise UserError(f"{path}:{number}: label {value!r} is not a class "
                            f"(expected one of {', '.join(class_names)} or 0..{len(class_names) - 1})")
        image = Path(rel) if Path(rel).is_absolute() else root / rel
        try:
            rel_to_root = image.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            raise UserError(f"{path}:{number}: {rel} is outside dataset.root ({root})") from None
        if not image.is_file():
            raise UserError(f"{image}: image not found (listed in {path}:{number})")
        paths.append(rel_to_root)
        labels.append(label)
    return ImageIndex(root, paths, labels, class_names)


# ------------------------------------------------------------------------------------------ builders
def build_folder(
    *,
    root: str | None,
    num_classes: int,
    train_dir: str,
    test_dir: str,
    train_csv: str | None,
    test_csv: str | None,
    class_names: Sequence[str] | None,
    loader_seed: int,
    **options: Any,
) -> DataBundle:
    """Users' own data (the ``dataset=folder`` target; ``options``: :class:`adadf.config.dataset.FolderConfig`).

    Either class folders ``<train_dir>/<class>/*`` and ``<test_dir>/<class>/*`` (classes = the train
    folders in sorted order), or, when ``train_csv`` and ``test_csv`` are set, two CSV files of
    ``path,label`` (paths relative to ``root``; CSV paths themselves relative to ``root`` too).
    ``class_names`` fixes the class order for CSV labels (default: the train CSV's sorted labels).
    """
    root_path = resolve_root(root, FOLDER_LAYOUT)
    if (train_csv is None) != (test_csv is None):
        raise UserError("dataset.train_csv / dataset.test_csv: set both or neither")
    if train_csv is not None:
        names = list(class_names) if class_names is not None else None
        train = read_csv(root_path / Path(train_csv).expanduser(), root_path, names)
        test = read_csv(root_path / Path(test_csv).expanduser(), root_path, train.class_names)
    else:
        if class_names is not None:
            raise UserError("dataset.class_names: only used with CSV files; class folders name the classes")
        train, test = read_folder(root_path, train_dir, test_dir)
    return build_image_bundle(train, test, num_classes=num_classes, loader_seed=loader_seed, **options)
