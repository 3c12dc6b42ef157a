"""SFEW 2.0: ``Train/<Class>/*`` and ``Val/<Class>/*`` (Val is the test set), spec section 5."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from adadf.data.bundle import DataBundle
from adadf.data.folder import read_class_folders
from adadf.data.images import build_image_bundle, resolve_root
from adadf.data.index import ImageIndex

CLASS_NAMES = ["Angry", "Disgust", "Fear", "Happy", "Neutral", "Sad", "Surprise"]  # alphabetical
LAYOUT = "SFEW 2.0's folder with Train/<Class>/ and Val/<Class>/"


def read_sfew(root: str | Path) -> tuple[ImageIndex, ImageIndex]:
    """(Train, Val) of SFEW 2.0; Val is the test set; classes in alphabetical order."""
    root = Path(root)
    return (read_class_folders(root, "Train", CLASS_NAMES), read_class_folders(root, "Val", CLASS_NAMES))


def build_sfew(*, root: str | None, loader_seed: int, **options: Any) -> DataBundle:
    """SFEW 2.0 loaders (the ``dataset=sfew`` target; ``options``: :class:`adadf.config.dataset.SfewConfig`):
    ten crops per image by default."""
    train, test = read_sfew(resolve_root(root, LAYOUT))
    return build_image_bundle(train, test, loader_seed=loader_seed, **options)
