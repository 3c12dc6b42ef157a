"""Schemas of the ``dataset`` config group: every key's default and range, written once.

One dataclass per option of ``adadf/conf/dataset/`` (:data:`DATASET_SCHEMAS`, keyed by the option name),
registered with Hydra's ConfigStore as ``schema/dataset/<option>``; each YAML file extends its schema
and holds only what differs. The builder named by ``_target_`` takes exactly these keys (minus
``_target_``) plus the run's ``loader_seed`` and keeps no defaults of its own.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, List, Optional

from adadf.config.fields import at_least, half_open01, one_of, ranged

# auto: device on CUDA, reference elsewhere (adadf.data.images.resolve_pipeline); fast: small_first's old name
PIPELINES = ("auto", "reference", "device", "small_first", "fast")
RECIPES = ("standard", "tencrop")
VERIFY_MODES = ("auto", "decode", "exists")


@dataclass
class DatasetConfig:
    """Keys every dataset has."""

    # How the data are read, not what they are: free to change when a run is resumed.
    RESUME_FREE: ClassVar[tuple[str, ...]] = ("num_workers", "verify_images", "cache_dir")

    _target_: str = ""
    root: Optional[str] = None  # relative paths are taken from the launch directory
    num_classes: int = ranged(7, *at_least(2))
    batch_size: int = ranged(64, *at_least(1))
    num_workers: int = ranged(4, *at_least(0))
    image_size: int = ranged(224, *at_least(16))
    val_fraction: float = ranged(0.0, *half_open01())  # > 0: a stratified validation split of train
    label_noise: float = ranged(0.0, *half_open01())  # fraction of training labels flipped (adadf.data.noise)
    noise_seed: Optional[int] = ranged(None, *at_least(0))  # seeds the flips; None: the run's seed


@dataclass
class ImageDatasetConfig(DatasetConfig):
    """Datasets of image files (everything but the built-in synthetic one)."""

    # How the data are held, not what they are: the same batches either way (adadf.data.resident).
    RESUME_FREE: ClassVar[tuple[str, ...]] = (*DatasetConfig.RESUME_FREE, "resident", "resident_max_share")

    pipeline: str = ranged("auto", *one_of(*PIPELINES))  # every dataset's default: the recipe's exact order
    recipe: str = ranged("standard", *one_of(*RECIPES))
    balanced: bool = False  # class-balanced sampler
    verify_images: str = ranged("auto", *one_of(*VERIFY_MODES))
    # pipeline=device: each split's uint8 pixels held whole (on the GPU when they take at most
    # resident_max_share of its free memory, else pinned host memory), batches gathered, no workers
    resident: bool = True
    resident_max_share: float = ranged(0.5, lambda x: 0.0 < x <= 1.0, "a value in (0, 1]")


@dataclass
class SyntheticConfig(DatasetConfig):
    RESUME_FREE: ClassVar[tuple[str, ...]] = (*DatasetConfig.RESUME_FREE, "root")  # root: where the cache lives

    _target_: str = "adadf.data.synthetic.build_synthetic"
    num_classes: int = ranged(7, lambda x: x == 7, "7 (the synthetic dataset's classes)")
    num_workers: int = ranged(0, *at_least(0))
    image_size: int = ranged(48, *at_least(32))
    train_size: int = ranged(2100, *at_least(7))
    test_size: int = ranged(700, *at_least(7))
    ambiguity: float = ranged(0.0, *half_open01())
    seed: int = 0  # fixes the data (the run's seed fixes the order)


@dataclass
class RafConfig(ImageDatasetConfig):
    _target_: str = "adadf.data.raf.build_raf"
    root: Optional[str] = "datasets/raf-basic"


@dataclass
class AffectNet7Config(ImageDatasetConfig):
    _target_: str = "adadf.data.affectnet.build_affectnet"
    root: Optional[str] = "datasets/affectnet"
    num_classes: int = ranged(7, lambda x: x in (7, 8), "7 or 8")
    balanced: bool = True
    cache_dir: Optional[str] = None  # index cache fallback when the root is read-only


@dataclass
class AffectNet8Config(AffectNet7Config):
    num_classes: int = ranged(8, lambda x: x in (7, 8), "7 or 8")


@dataclass
class SfewConfig(ImageDatasetConfig):
    _target_: str = "adadf.data.sfew.build_sfew"
    root: Optional[str] = "datasets/sfew"
    batch_size: int = ranged(16, *at_least(1))
    recipe: str = ranged("tencrop", *one_of(*RECIPES))


@dataclass
class FolderConfig(ImageDatasetConfig):
    _target_: str = "adadf.data.folder.build_folder"
    train_dir: str = "train"
    test_dir: str = "test"
    train_csv: Optional[str] = None
    test_csv: Optional[str] = None
    class_names: Optional[List[str]] = None


def dataset_schema(target: str | None) -> type[DatasetConfig] | None:
    """The schema of the dataset whose builder is ``target`` (a ``_target_``), None when unknown."""
    return next((s for s in DATASET_SCHEMAS.values() if s._target_ == target), None)


def dataset_name(config: dict) -> str:
    """The ``dataset=`` option a recorded dataset config came from (``raf``, ``affectnet8`` ...), for
    people to read; its ``_target_`` when no option builds it."""
    target = config.get("_target_")
    names = [name for name, schema in DATASET_SCHEMAS.items() if schema._target_ == target]
    exact = [name for name in names if DATASET_SCHEMAS[name].num_classes == config.get("num_classes")]
    return (exact or names or [str(target)])[0]


DATASET_SCHEMAS: dict[str, type[DatasetConfig]] = {
    "synthetic": SyntheticConfig,
    "raf": RafConfig,
    "affectnet7": AffectNet7Config,
    "affectnet8": AffectNet8Config,
    "sfew": SfewConfig,
    "folder": FolderConfig,
}
