"""AffectNet: ``{train_set,val_set}/images/<id>.jpg`` + ``annotations/<id>_exp.npy`` (spec section 5).

``val_set`` is the test set. Labels: 0 Neutral, 1 Happy, 2 Sad, 3 Surprise, 4 Fear, 5 Disgust,
6 Anger, 7 Contempt; ``num_classes=7`` (affectnet7) drops Contempt, 8 keeps it.

Reading ~290k annotation files takes minutes, so the scan of each split is cached as JSON (image
paths relative to the dataset root, with every label 0..7): ``<root>/.adadf-index-<split>.json``
when the root is writable, else ``$ADADF_CACHE_DIR/listings/`` (default ``~/.cache/adadf/listings/``,
:mod:`adadf.data.cache`). The cache is keyed by the split's directory listing (the names
in ``images/`` and ``annotations/``), so adding, removing or renaming a file rescans; after editing
a label file in place, delete the cache file.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from adadf.atomic import atomic_open
from adadf.data.bundle import DataBundle
from adadf.data.cache import cache_dir as adadf_cache_dir
from adadf.data.images import build_image_bundle, is_image_name, list_dir, resolve_root
from adadf.data.index import ImageIndex
from adadf.errors import UserError, first_line

log = logging.getLogger(__name__)

CLASS_NAMES = ["Neutral", "Happy", "Sad", "Surprise", "Fear", "Disgust", "Anger", "Contempt"]
SPLITS = {"train": "train_set", "test": "val_set"}
ANNOTATION_SUFFIX = "_exp.npy"
CACHE_FORMAT = 1
LAYOUT = "AffectNet's folder with train_set/ and val_set/, each holding images/ and annotations/"


# ------------------------------------------------------------------------------------------ cache
def cache_locations(root: Path, split_dir: str, cache_dir: Path | None = None) -> list[Path]:
    """Where a split's index cache may live, in order of preference."""
    digest = hashlib.sha256(str(root).encode()).hexdigest()[:16]
    return [root / f".adadf-index-{split_dir}.json",
            (cache_dir or adadf_cache_dir("listings")) / f"{digest}-{split_dir}.json"]


def _read_cache(paths: list[Path], listing: str) -> dict | None:
    for path in paths:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if (isinstance(data, dict) and data.get("format") == CACHE_FORMAT and data.get("listing") == listing
                and isinstance(data.get("paths"), list) and len(data["paths"]) == len(data.get("labels", ()))):
            log.info("AffectNet index read from cache %s", path)
            return data
    return None


def _write_cache(paths: list[Path], data: dict) -> None:
    for path in paths:
        try:
            with atomic_open(path, "w") as f:  # readable by others: they may share the dataset
                json.dump(data, f)
            log.info("AffectNet index cached at %s", path)
            return
        except OSError as err:
            log.debug("cannot write the index cache %s (%s)", path, err)
    log.warning("cannot write the AffectNet index cache (tried %s); the next run rescans",
                ", ".join(str(p) for p in paths))


# ------------------------------------------------------------------------------------------ reading
def _sort_key(ident: str) -> tuple:
    return (0, int(ident), "") if ident.isdigit() else (1, 0, ident)


def read_label(path: Path) -> int:
    """The expression label in ``<id>_exp.npy``: a numpy scalar, either a number or a numeric string."""
    try:
        value = np.load(path, allow_pickle=False)
    except Exception as err:  # noqa: BLE001 - any failure to read is a bad file from the user
        raise UserError(f"{path}: cannot read the label file ({first_line(err)})") from None
    try:
        if value.size != 1:
            raise ValueError
        item = value.reshape(()).item()
        label = int(item.decode() if isinstance(item, bytes) else item)
        if isinstance(item, float) and item != label:
            raise ValueError
    except (ValueError, TypeError, UnicodeDecodeError):
        raise UserError(f"{path}: expected a scalar expression label 0..{len(CLASS_NAMES) - 1}, "
                        f"got {value.dtype} of shape {value.shape}") from None
    if not 0 <= label < len(CLASS_NAMES):
        raise UserError(f"{path}: label {label} out of range 0..{len(CLASS_NAMES) - 1}")
    return label


def scan_split(root: Path, split_dir: str, cache_dir: Path | None = None) -> tuple[list[str], list[int]]:
    """(image paths relative to ``root``, labels 0..7) of one split, sorted by id; cached (see module)."""
    base = root / split_dir
    if not base.is_dir():
        raise UserError(f"{base}: split folder not found; expected {LAYOUT}")
    annotation_names = [n for n in list_dir(base / "annotations") if n.endswith(ANNOTATION_SUFFIX)]
    image_names = [n for n in list_dir(base / "images") if is_image_name(n)]
    listing = hashlib.sha256("\0".join(annotation_names + ["|"] + image_names).encode()).hexdigest()
    locations = cache_locations(root, split_dir, cache_dir)
    cached = _read_cache(locations, listing)
    if cached is not None:
        return cached["paths"], cached["labels"]

    images = {}
    for name in image_names:
        images.setdefault(Path(name).stem, name)
    idents = sorted((n[: -len(ANNOTATION_SUFFIX)] for n in annotation_names), key=_sort_key)
    if not idents:
        raise UserError(f"{base / 'annotations'}: no *{ANNOTATION_SUFFIX} label files: the {split_dir} split is empty")
    paths = []
    for ident in idents:
        if ident not in images:
            raise UserError(f"{base / 'images' / (ident + '.jpg')}: image not found "
                            f"(labelled by {split_dir}/annotations/{ident}{ANNOTATION_SUFFIX})")
        paths.append(f"{split_dir}/images/{images[ident]}")
    start = time.perf_counter()
    log.info("scanning %d AffectNet %s label files (cached for later runs)", len(idents), split_dir)
    files = [base / "annotations" / f"{ident}{ANNOTATION_SUFFIX}" for ident in idents]
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        labels = list(pool.map(read_label, files, chunksize=256))
    log.info("scanned %s in %.1f s", split_dir, time.perf_counter() - start)
    _write_cache(locations, {"format": CACHE_FORMAT, "listing": listing, "paths": paths, "labels": labels})
    return paths, labels


def read_affectnet(root: str | Path, num_classes: int = 7,
                   cache_dir: Path | None = None) -> tuple[ImageIndex, ImageIndex]:
    """(train, test = val_set) indexes; ``num_classes`` 7 drops Contempt (label 7), 8 keeps it."""
    if num_classes not in (7, 8):
        raise UserError(f"dataset.num_classes={num_classes}: AffectNet has 7 (affectnet7) or 8 (affectnet8) classes")
    root = Path(root)
    out = []
    for split_dir in SPLITS.values():
        paths, labels = scan_split(root, split_dir, cache_dir)
        keep = [i for i, label in enumerate(labels) if label < num_classes]
        out.append(ImageIndex(root, [paths[i] for i in keep], [labels[i] for i in keep],
                              CLASS_NAMES[:num_classes]))
    return out[0], out[1]


def build_affectnet(*, root: str | None, num_classes: int, cache_dir: str | None, loader_seed: int,
                    **options: Any) -> DataBundle:
    """AffectNet loaders (the ``dataset=affectnet7|affectnet8`` target; ``options``:
    :class:`adadf.config.dataset.AffectNet7Config`), class-balanced by default."""
    root_path = resolve_root(root, LAYOUT)
    train, test = read_affectnet(root_path, num_classes,
                                 Path(cache_dir).expanduser().absolute() if cache_dir else None)
    return build_image_bundle(train, test, num_classes=num_classes, loader_seed=loader_seed, **options)
