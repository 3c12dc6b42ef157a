"""The paper's augmentation recipes (docs/datasets.md, docs/recipes.md) as data, and their PIL/torchvision form.

A :class:`Recipe` says what to do (sizes, RandAugment string, flip, erasing, normalisation); the
``reference`` pipeline turns it into per-image torchvision transforms built from timm's
``rand_augment_transform`` (:func:`train_transform`, :func:`eval_transform`); a faster pipeline may
read the same recipe and do the equivalent on batches.

Two recipes:

- ``standard`` (RAF-DB, AffectNet): resize to SxS (bilinear, aspect not kept) -> RandAugment
  ``rand-m5-n3-mstd0.5`` -> flip p=0.5 -> tensor -> normalise -> RandomErasing(p=0.5, scale=(0.02, 0.25)).
  Test: resize SxS -> tensor -> normalise.
- ``tencrop`` (SFEW): resize the shorter side to S*256/224 -> TenCrop(S) -> per crop: RandAugment
  ``rand-m3-n5-mstd0.5`` -> flip -> tensor -> normalise -> RandomErasing. Test: resize -> TenCrop ->
  tensor -> normalise. Images come out as ``[10, 3, S, S]``.

S is ``dataset.image_size`` (224 in the paper); every size of the recipe scales with it.

Posterize: timm's ``Posterize`` keeps ``int(magnitude / 10 * 4)`` bits, i.e. 0 bits whenever the
sampled magnitude falls below 2.5 (about 16% of the draws at m=3, mstd=0.5). Old Pillow turned 0
bits into a black image; Pillow >= 13 raises. We keep timm's op and level mapping and only raise the
bit count to at least ``Recipe.min_posterize_bits`` (1) by wrapping the op's level function
(:class:`AtLeastBits`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.data.auto_augment import rand_augment_transform
from torchvision import transforms as T

from adadf.errors import UserError

IMAGENET_MEAN: tuple[float, float, float] = IMAGENET_DEFAULT_MEAN  # what the pretrained trunks expect
IMAGENET_STD: tuple[float, float, float] = IMAGENET_DEFAULT_STD
PAPER_SIZE = 224  # the size the paper's recipes are written for


@dataclass(frozen=True)
class Recipe:
    """One augmentation recipe at one image size (read by every pipeline; sizes in pixels)."""

    name: str
    image_size: int = PAPER_SIZE  # network input side (the crop side for ten-crop)
    resize: int = PAPER_SIZE  # resize target: the side ("square") or the shorter side ("shorter")
    resize_mode: str = "square"  # "square": (resize, resize), aspect not kept | "shorter": keep aspect
    ten_crop: bool = False  # torchvision TenCrop(image_size) after the resize, train and test
    randaugment: str | None = "rand-m5-n3-mstd0.5"  # timm rand_augment_transform config (None: off)
    translate_const: int = 117  # timm hparams (scaled with image_size)
    img_mean: tuple[int, int, int] = (124, 116, 104)  # fill colour of geometric ops
    min_posterize_bits: int = 1  # Pillow >= 13 rejects 0 bits (see module docstring)
    flip_p: float = 0.5
    erasing_p: float = 0.5
    erasing_scale: tuple[float, float] = (0.02, 0.25)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @property
    def num_crops(self) -> int:
        return 10 if self.ten_crop else 1

    def randaugment_hparams(self) -> dict:
        return {"translate_const": self.translate_const, "img_mean": tuple(self.img_mean)}


def _scaled(value: int, image_size: int) -> int:
    return max(1, round(value * image_size / PAPER_SIZE))


def standard_recipe(image_size: int = PAPER_SIZE) -> Recipe:
    """RAF-DB / AffectNet (spec section 5)."""
    return Recipe(name="standard", image_size=image_size, resize=image_size, resize_mode="square",
                  randaugment="rand-m5-n3-mstd0.5", translate_const=_scaled(117, image_size))


def tencrop_recipe(image_size: int = PAPER_SIZE) -> Recipe:
    """SFEW: shorter side 256 -> TenCrop(224) at the paper's size, same ratio at other sizes."""
    return Recipe(name="tencrop", image_size=image_size, resize=_scaled(256, image_size),
                  resize_mode="shorter", ten_crop=True, randaugment="rand-m3-n5-mstd0.5",
                  translate_const=_scaled(117, image_size))


RECIPES: dict[str, Callable[[int], Recipe]] = {"standard": standard_recipe, "tencrop": tencrop_recipe}


def make_recipe(name: str, image_size: int = PAPER_SIZE, key: str = "dataset.recipe") -> Recipe:
    """The recipe called ``name`` at ``image_size``; an unknown name is a one-line UserError."""
    if name not in RECIPES:
        raise UserError(f"{key}={name}: expected one of {', '.join(RECIPES)}")
    if not isinstance(image_size, int) or image_size < 16:
        raise UserError(f"dataset.image_size={image_size}: expected an integer >= 16")
    return RECIPES[name](image_size)


# ------------------------------------------------------------------------------ PIL / torchvision
class AtLeastBits:
    """Wrap a timm Posterize level function so it never asks for fewer than ``min_bits`` bits."""

    def __init__(self, level_fn: Callable[..., tuple], min_bits: int = 1) -> None:
        self.level_fn = level_fn
        self.min_bits = int(min_bits)

    def __call__(self, level: float, hparams: dict) -> tuple[int]:
        (bits,) = self.level_fn(level, hparams)
        return (max(self.min_bits, int(bits)),)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(min_bits={self.min_bits})"


def randaugment(recipe: Recipe) -> Callable:
    """timm's RandAugment for ``recipe`` (PIL in, PIL out), with the Posterize bit floor."""
    ra = rand_augment_transform(recipe.randaugment, hparams=recipe.randaugment_hparams())
    for op in ra.ops:
        if op.name.startswith("Posterize"):
            op.level_fn = AtLeastBits(op.level_fn, recipe.min_posterize_bits)
    return ra


class StackCrops:
    """Apply ``transform`` to every crop of a TenCrop tuple and stack: PIL crops -> [K, 3, H, W]."""

    def __init__(self, transform: Callable) -> None:
        self.transform = transform

    def __call__(self, crops: tuple) -> torch.Tensor:
        return torch.stack([self.transform(crop) for crop in crops])

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.transform})"


def _resize(recipe: Recipe) -> T.Resize:
    size = (recipe.resize, recipe.resize) if recipe.resize_mode == "square" else recipe.resize
    return T.Resize(size, interpolation=T.InterpolationMode.BILINEAR)


def _per_image_train(recipe: Recipe) -> list:
    steps = []
    if recipe.randaugment:
        steps.append(randaugment(recipe))
    if recipe.flip_p > 0:
        steps.append(T.RandomHorizontalFlip(recipe.flip_p))
    steps += [T.ToTensor(), T.Normalize(recipe.mean, recipe.std)]
    if recipe.erasing_p > 0:
        steps.append(T.RandomErasing(p=recipe.erasing_p, scale=recipe.erasing_scale))
    return steps


def train_transform(recipe: Recipe) -> Callable:
    """PIL RGB image -> float tensor [3, S, S] (or [10, 3, S, S] with ten-crop), augmented."""
    if recipe.ten_crop:
        return T.Compose([_resize(recipe), T.TenCrop(recipe.image_size),
                          StackCrops(T.Compose(_per_image_train(recipe)))])
    return T.Compose([_resize(recipe), *_per_image_train(recipe)])


def eval_transform(recipe: Recipe) -> Callable:
    """PIL RGB image -> float tensor [3, S, S] (or [10, 3, S, S] with ten-crop), no augmentation."""
    to_tensor = [T.ToTensor(), T.Normalize(recipe.mean, recipe.std)]
    if recipe.ten_crop:
        return T.Compose([_resize(recipe), T.TenCrop(recipe.image_size), StackCrops(T.Compose(to_tensor))])
    return T.Compose([_resize(recipe), *to_tensor])


__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "RECIPES", "AtLeastBits", "Recipe", "StackCrops", "eval_transform",
    "make_recipe", "randaugment", "standard_recipe", "tencrop_recipe", "train_transform",
]
