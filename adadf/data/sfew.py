"""SFEW 2.0: ``Train/<Class>/*`` and ``Val/<Class>/*`` (Val is the test set), spec section 5."""
from __future__ import annotations

from pathlib import Path

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


def build_sfew(
    *,
    root: str | None,
    num_classes: int = 7,
    batch_size: int = 16,
    num_workers: int = 4,
    image_size: int = 224,
    val_fraction: float = 0.0,
    pipeline: str = "reference",
    recipe: str = "tencrop",
    balanced: bool = False,
    verify_images: str = "auto",
    loader_seed: int = 0,
) -> DataBundle:
    """SFEW 2.0 loaders (the ``dataset=sfew`` target): ten crops per image by default."""
    train, test = read_sfew(resolve_root(root, LAYOUT))
    return build_image_bundle(
        train, test, num_classes=num_classes, recipe=recipe, image_size=image_size, pipeline=pipeline,
        batch_size=batch_size, num_workers=num_workers, loader_seed=loader_seed, val_fraction=val_fraction,
        balanced=balanced, verify_images=verify_images,
    )
