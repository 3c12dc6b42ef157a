"""The fast input pipeline: decoded image cache, per-image augmentation at the stored size, batch
transforms, and its agreement with the reference pipeline where the recipe is deterministic."""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fakedata
from fakedata import build
from adadf.data import fast
from adadf.data.batch_randaugment import BatchRandAugment
from adadf.data.fast import (
    AugmentResizeNormalizeErase,
    CachedImageDataset,
    ResizeNormalize,
    ResizeNormalizeErase,
    SmallImageAugment,
    build_cache,
    build_fast_bundle,
)
from adadf.data.images import load_rgb
from adadf.data.raf import read_raf
from adadf.data.transforms import eval_transform, standard_recipe, tencrop_recipe
from adadf.errors import UserError

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def raf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fakedata.write_raf(tmp_path_factory.mktemp("raf") / "raf-basic", per_class=4, size=40, test_per_class=2)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ADADF_CACHE_DIR", str(tmp_path))
    return tmp_path / "images"


def test_cache_holds_the_decoded_images_and_is_reused(raf, cache):
    train, _ = read_raf(raf)
    path = build_cache(train, 40, split="train")
    assert path.parent == cache
    pixels = np.load(path)
    assert pixels.shape == (len(train), 40, 40, 3) and pixels.dtype == np.uint8
    for i in (0, len(train) - 1):
        assert np.array_equal(pixels[i], np.asarray(load_rgb(train.absolute(i))))
    mtime = path.stat().st_mtime_ns
    assert build_cache(train, 40, split="train") == path  # same index, same size: reused
    assert path.stat().st_mtime_ns == mtime
    assert build_cache(train, 20, split="train") != path  # another size: another file


def test_cache_is_rebuilt_when_an_image_changes(raf, cache, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(raf, root)
    train, _ = read_raf(root)
    first = build_cache(train, 40, split="train")
    image = train.absolute(0)
    Image.new("RGB", (40, 40), (255, 0, 0)).save(image, quality=95)
    os.utime(image, ns=(1, 1))  # a different mtime even on coarse file systems
    second = build_cache(train, 40, split="train")
    assert second != first
    assert np.load(second)[0, 0, 0].tolist() == list(np.asarray(load_rgb(image))[0, 0])


def test_cache_resizes_to_the_stored_size(raf, cache):
    train, _ = read_raf(raf)
    pixels = np.load(build_cache(train, 24, split="train"))
    expected = np.asarray(load_rgb(train.absolute(3)).resize((24, 24), Image.BILINEAR))
    assert np.array_equal(pixels[3], expected)


def test_dataset_items_and_pickling(raf, cache):
    import pickle

    train, _ = read_raf(raf)
    path = build_cache(train, 40, split="train")
    ds = CachedImageDataset(path, train.labels)
    image, label = ds[2]
    assert image.shape == (3, 40, 40) and image.dtype == torch.uint8 and label == train.labels[2]
    assert torch.equal(image.permute(1, 2, 0), torch.from_numpy(np.array(load_rgb(train.absolute(2)))))
    clone = pickle.loads(pickle.dumps(ds))  # what a DataLoader worker receives: the path, not the pixels
    assert clone._pixels is None and torch.equal(clone[2][0], image)


def test_eval_transform_matches_the_reference(raf, cache):
    """Resize + normalise on uint8 batches equals the reference's PIL path to one grey level."""
    recipe = standard_recipe(96)
    _, test = read_raf(raf)
    ds = CachedImageDataset(build_cache(test, 40, split="test"), test.labels)
    batch = torch.stack([ds[i][0] for i in range(len(ds))])
    ours = ResizeNormalize(96, recipe.mean, recipe.std)(batch)
    reference = torch.stack([eval_transform(recipe)(load_rgb(test.absolute(i))) for i in range(len(test))])
    assert ours.shape == reference.shape == (len(test), 3, 96, 96)
    assert ours.is_contiguous()
    one_level = 1 / 255 / min(STD) + 1e-5
    diff = (ours - reference).abs()
    assert diff.max() <= one_level
    assert (diff > 1e-5).float().mean() < 0.01  # almost every pixel identical


def test_normalize_without_resize():
    x = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    out = ResizeNormalize(8, MEAN, STD)(x)
    expected = (x.float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_random_erasing_follows_torchvision():
    """Same RNG stream as torchvision's RandomErasing(p, scale, value=0) applied image by image."""
    from torchvision import transforms as T

    x = torch.randint(0, 256, (32, 3, 8, 8), dtype=torch.uint8)
    tf = ResizeNormalizeErase(16, MEAN, STD, erasing_p=0.5, erasing_scale=(0.02, 0.25))
    normalised = ResizeNormalize(16, MEAN, STD)(x)
    torch.manual_seed(3)
    ours = tf(x)
    torch.manual_seed(3)
    erase = T.RandomErasing(p=0.5, scale=(0.02, 0.25))
    theirs = torch.stack([erase(img) for img in normalised])
    assert torch.equal(ours, theirs)
    erased = (ours == 0).all(1).flatten(1).any(1)
    assert 0 < int(erased.sum()) < 32  # about half the images


def test_small_image_augment_is_the_recipe(raf):
    recipe = standard_recipe(224)
    augment = SmallImageAugment(recipe, 100)
    ra, flip = augment.transform.transforms
    assert [op.name for op in ra.ops][:3] == ["AutoContrast", "Equalize", "Invert"] and ra.num_layers == 3
    assert all(op.magnitude == 5 and op.magnitude_std == 0.5 for op in ra.ops)
    assert ra.ops[0].hparams["translate_const"] == round(117 * 100 / 224)
    assert ra.ops[0].hparams["img_mean"] == (124, 116, 104)
    posterize = next(op for op in ra.ops if op.name.startswith("Posterize"))
    assert posterize.level_fn(0.0, posterize.hparams)[0] >= 1  # the reference's bit floor
    assert flip.p == 0.5
    image = Image.new("RGB", (100, 100), (10, 200, 30))
    assert augment(image).size == (100, 100)


def test_fast_bundle_end_to_end(raf, cache):
    bundle = build("raf", root=str(raf), pipeline="fast", image_size=64, batch_size=4, num_workers=0)
    images, labels = next(iter(bundle.train_loader))
    assert images.dtype == torch.uint8 and images.shape == (4, 3, 40, 40)  # stored at the native 40 px
    x = bundle.train_batch_transform(images)
    assert x.shape == (4, 3, 64, 64) and x.dtype == torch.float32
    test_images, _ = next(iter(bundle.test_loader))
    assert bundle.eval_batch_transform(test_images).shape == (4, 3, 64, 64)
    assert len(bundle.train_loader) == 28 // 4 and len(bundle.clean_train_loader.dataset) == 28
    assert sorted(p.name.split("-")[0] for p in cache.glob("*.npy")) == ["test", "train"]
    assert sorted(p.name.split("-")[0] for p in cache.glob("*.npy.sha256")) == ["test", "train"]


def test_fast_bundle_options(raf, cache):
    train, test = read_raf(raf)
    bundle = build("raf", root=str(raf), pipeline="fast", image_size=16, batch_size=2, num_workers=0,
                   val_fraction=0.25, balanced=True)
    assert bundle.val_loader is not None
    assert len(bundle.val_loader.dataset) + len(bundle.clean_train_loader.dataset) == len(train)
    assert type(bundle.train_loader.sampler.sampler).__name__ == "ClassBalancedSampler"
    images, _ = next(iter(bundle.train_loader))
    assert images.shape[-1] == 16  # stored at the recipe's size when it is below the images' 40 px
    with pytest.raises(UserError, match="dataset.pipeline=fast"):
        build_fast_bundle(train, test, tencrop_recipe(32), augment_on="workers", batch_size=2, num_workers=0,
                          loader_seed=0)


def test_fast_pipeline_with_workers(raf, cache):
    """Workers open the memory map themselves and augment with their own seeds."""
    bundle = build("raf", root=str(raf), pipeline="fast", image_size=48, batch_size=4, num_workers=2)
    batches = [images for images, _ in bundle.train_loader]
    assert len(batches) == 7 and all(b.shape == (4, 3, 40, 40) for b in batches)


def test_device_pipeline_augments_on_the_device(raf, cache):
    """pipeline=device: workers hand over the stored pixels untouched; the batch transform runs the
    recipe (RandAugment, flip, resize, normalise, erase) and draws from torch's global RNG."""
    bundle = build("raf", root=str(raf), pipeline="device", image_size=64, batch_size=4, num_workers=0)
    transform = bundle.train_batch_transform
    assert isinstance(transform, AugmentResizeNormalizeErase) and isinstance(transform.augment, BatchRandAugment)
    augment = transform.augment
    assert (augment.num_ops, augment.magnitude, augment.magnitude_std, augment.min_posterize_bits) == (3, 5.0, 0.5, 1)
    assert transform.flip_p == 0.5 and transform.erasing_p == 0.5
    images, _ = next(iter(bundle.train_loader))
    stored = np.load(next(cache.glob("train-*.npy")))
    assert any(np.array_equal(images[0].permute(1, 2, 0).numpy(), stored[i]) for i in range(len(stored)))
    torch.manual_seed(0)
    first = transform(images)
    torch.manual_seed(0)
    assert torch.equal(first, transform(images))  # seeded: reproducible (and saved with the RNG state)
    assert first.shape == (4, 3, 64, 64) and first.dtype == torch.float32
    assert not torch.equal(first, transform(images))  # and random
    # Without augmentation it is exactly the fast pipeline's resize + normalise.
    plain = AugmentResizeNormalizeErase(None, 0.0, 64, MEAN, STD, 0.0, (0.02, 0.25))
    assert torch.equal(plain(images), ResizeNormalize(64, MEAN, STD)(images))


def test_device_pipeline_through_run_py(run_cli, raf, tmp_path):
    run = tmp_path / "run"
    proc = run_cli(["dataset=raf", f"dataset.root={raf}", "dataset.pipeline=device", "dataset.num_workers=0",
                    "dataset.image_size=32", "dataset.batch_size=8", "backbone.checkpoint=null", "trainer.epochs=1",
                    "logger=csv", "trainer.progress=false", f"hydra.run.dir={run}"],
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "device pipeline" in (run / "run.log").read_text()
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_batch_transforms_on_cuda():
    x = torch.randint(0, 256, (4, 3, 40, 40), dtype=torch.uint8)
    cpu = ResizeNormalize(96, MEAN, STD)(x)
    gpu = ResizeNormalize(96, MEAN, STD)(x.cuda())
    assert gpu.is_cuda and gpu.shape == cpu.shape
    assert (gpu.cpu() - cpu).abs().max() <= 1 / 255 / min(STD) + 1e-4  # float vs uint8 rounding
    erased = ResizeNormalizeErase(96, MEAN, STD, 1.0, (0.02, 0.25))(x.cuda())
    assert erased.is_cuda and bool((erased == 0).all(1).flatten(1).any(1).all())


def test_module_documents_every_difference():
    doc = fast.__doc__
    for needle in ("before", "Flip commutes", "geometric", "Sharpness", "uint8", "Random streams", "ten-crop"):
        assert needle in doc
    assert dataclasses.is_dataclass(standard_recipe())
