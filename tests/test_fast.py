"""The cached input pipelines (adadf/data/fast.py): decoded image cache; ``device`` (the recipe in its
order, batched on the device; ten-crop); ``small_first`` (RandAugment at the stored size, in the
workers); their agreement with the reference pipeline where the recipe is deterministic."""
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
from adadf.data import batch_randaugment as br
from adadf.data import fast
from adadf.data.batch_randaugment import BatchRandAugment
from adadf.data.fast import (
    CachedImageDataset,
    ResizeAugmentNormalizeErase,
    ResizeNormalize,
    ResizeNormalizeErase,
    SmallImageAugment,
    TenCropCachedDataset,
    build_cache,
    build_cached_bundle,
    ten_crop_windows,
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


def test_random_erasing_draws_torchvision_rectangles():
    """RandomErasing's rectangles for a whole batch at once (fast.erasing_boxes): torchvision's
    distribution (p, area, aspect, position), not its stream (it draws image by image)."""
    from torchvision import transforms as T

    n, h, w, scale = 3000, 24, 20, (0.02, 0.25)
    torch.manual_seed(0)
    top, left, bottom, right = fast.erasing_boxes(n, h, w, 0.5, scale).T
    ours = torch.stack((top, left, bottom - top, right - left), 1)[bottom > top]
    torch.manual_seed(1)
    image, theirs = torch.zeros(3, h, w), []
    for _ in range(n):
        if torch.rand(1) < 0.5:  # as T.RandomErasing.forward
            i, j, eh, ew, _ = T.RandomErasing.get_params(image, scale=scale, ratio=fast.ERASING_RATIO, value=[0.0])
            if (eh, ew) != (h, w):  # get_params' "no rectangle fitted"
                theirs.append((i, j, eh, ew))
    theirs = torch.tensor(theirs, dtype=torch.float32)
    assert abs(len(ours) - len(theirs)) < 0.06 * n
    grid = torch.arange(max(h, w) + 1)
    for k in range(4):  # top, left, height, width: two-sample Kolmogorov-Smirnov distance
        ours_cdf, theirs_cdf = ((v[:, k].view(-1, 1) <= grid).float().mean(0) for v in (ours, theirs))
        assert (ours_cdf - theirs_cdf).abs().max() < 0.07, k


def test_random_erasing_zeroes_the_drawn_rectangles():
    """In every channel, exactly the rectangles erasing_boxes draws from the same RNG state."""
    x = torch.randint(0, 256, (32, 3, 8, 8), dtype=torch.uint8)
    tf = ResizeNormalizeErase(16, MEAN, STD, erasing_p=0.5, erasing_scale=(0.02, 0.25))
    torch.manual_seed(3)
    ours = tf(x)
    torch.manual_seed(3)
    boxes = fast.erasing_boxes(32, 16, 16, 0.5, (0.02, 0.25)).long()
    expected = ResizeNormalize(16, MEAN, STD)(x)
    for image, (top, left, bottom, right) in zip(expected, boxes.tolist()):
        image[:, top:bottom, left:right] = 0.0
    assert torch.equal(ours, expected)
    assert 0 < int((boxes[:, 2] > boxes[:, 0]).sum()) < 32  # about half the images


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


def test_small_first_bundle_end_to_end(raf, cache):
    bundle = build("raf", root=str(raf), pipeline="small_first", image_size=64, batch_size=4, num_workers=0)
    images, labels = next(iter(bundle.train_loader))
    assert images.dtype == torch.uint8 and images.shape == (4, 3, 40, 40)  # stored at the native 40 px
    x = bundle.train_batch_transform(images)
    assert x.shape == (4, 3, 64, 64) and x.dtype == torch.float32
    test_images, _ = next(iter(bundle.test_loader))
    assert bundle.eval_batch_transform(test_images).shape == (4, 3, 64, 64)
    assert len(bundle.train_loader) == 28 // 4 and len(bundle.clean_train_loader.dataset) == 28
    assert sorted(p.name.split("-")[0] for p in cache.glob("*.npy")) == ["test", "train"]
    assert sorted(p.name.split("-")[0] for p in cache.glob("*.npy.sha256")) == ["test", "train"]
    assert bundle.pipeline == "small_first" and isinstance(bundle.train_loader.dataset.augment, SmallImageAugment)


def test_old_name_fast_runs_small_first(raf, cache, caplog):
    with caplog.at_level("WARNING"):
        bundle = build("raf", root=str(raf), pipeline="fast", image_size=16, batch_size=4, num_workers=0)
    assert bundle.pipeline == "small_first" and "now called small_first" in caplog.text


def test_small_first_bundle_options(raf, cache):
    train, test = read_raf(raf)
    bundle = build("raf", root=str(raf), pipeline="small_first", image_size=16, batch_size=2, num_workers=0,
                   val_fraction=0.25, balanced=True)
    assert bundle.val_loader is not None
    assert len(bundle.val_loader.dataset) + len(bundle.clean_train_loader.dataset) == len(train)
    assert type(bundle.train_loader.sampler.sampler).__name__ == "ClassBalancedSampler"
    images, _ = next(iter(bundle.train_loader))
    assert images.shape[-1] == 16  # stored at the recipe's size when it is below the images' 40 px
    with pytest.raises(UserError, match="dataset.pipeline=small_first: supports square-resize recipes"):
        build_cached_bundle(train, test, tencrop_recipe(32), pipeline="small_first", batch_size=2, num_workers=0,
                            loader_seed=0)


def test_small_first_pipeline_with_workers(raf, cache):
    """Workers open the memory map themselves and augment with their own seeds."""
    bundle = build("raf", root=str(raf), pipeline="small_first", image_size=48, batch_size=4, num_workers=2)
    batches = [images for images, _ in bundle.train_loader]
    assert len(batches) == 7 and all(b.shape == (4, 3, 40, 40) for b in batches)


def test_device_pipeline_augments_on_the_device(raf, cache):
    """pipeline=device: workers hand over the stored pixels untouched; the batch transform runs the
    recipe (resize, RandAugment, flip, normalise, erase) and draws from torch's global RNG."""
    bundle = build("raf", root=str(raf), pipeline="device", image_size=64, batch_size=4, num_workers=0)
    assert bundle.pipeline == "device"
    transform = bundle.train_batch_transform
    assert isinstance(transform, ResizeAugmentNormalizeErase) and isinstance(transform.augment, BatchRandAugment)
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
    # Without augmentation it is exactly the evaluation's resize + normalise.
    plain = ResizeAugmentNormalizeErase(None, 0.0, 64, MEAN, STD, 0.0, (0.02, 0.25))
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


def _fixed_plan(transform: ResizeAugmentNormalizeErase, name: str, magnitude: float, n: int) -> None:
    """Make ``transform``'s RandAugment run exactly one op, ``name``, at ``magnitude`` on every image."""
    ops = torch.full((1, n), br.OP_NAMES.index(name))
    plan = br.Plan(ops=ops, apply=torch.ones(1, n, dtype=torch.bool),
                   magnitudes=torch.full((1, n), magnitude, dtype=torch.float64),
                   signs=torch.ones(1, n, dtype=torch.float64))
    transform.augment.plan = lambda batch, generator=None: plan


@pytest.mark.parametrize("name", ["Sharpness", "Rotate", "Equalize"])
def test_device_pipeline_order_is_resize_augment_flip_normalise_erase(name, monkeypatch):
    """The Done-when check: with a fixed plan, pipeline=device's output on a 100 px image is timm's op
    on the image resized to 224 px, then mirrored, normalised, erased (zeros after normalising)."""
    import timm.data.auto_augment as aa
    from torchvision import transforms as T

    monkeypatch.setattr(aa, "_randomly_negate", lambda v: v)
    recipe = dataclasses.replace(standard_recipe(224), flip_p=1.0, erasing_p=1.0)
    transform = fast.device_train_transform(recipe)
    small = torch.from_numpy(_faces(3, 100)).permute(0, 3, 1, 2).contiguous()  # [3, 3, 100, 100] uint8
    _fixed_plan(transform, name, 7.0, len(small))
    torch.manual_seed(0)
    ours = transform(small)  # [3, 3, 224, 224]
    assert ours.shape == (3, 3, 224, 224)
    erased = (ours == 0).all(1)  # RandomErasing last: its rectangle is 0 after normalising
    assert erased.flatten(1).any(1).all()

    op = aa.AugmentOp(name, prob=1.0, magnitude=7.0, hparams={**recipe.randaugment_hparams(),
                                                              "interpolation": Image.BILINEAR})
    normalize = T.Normalize(MEAN, STD)
    resized = transform.resize_to_integers(small)  # the device's resize (PIL's to one grey level)
    one_level = 1 / 255 / min(STD) + 1e-5
    for i in range(len(small)):
        pil = Image.fromarray(resized[i].permute(1, 2, 0).numpy())
        expected = normalize(T.functional.to_tensor(T.functional.hflip(op(pil))))  # resize -> op -> flip -> norm
        keep = ~erased[i]
        diff = (ours[i] - expected).abs()[:, keep]
        assert diff.max() <= one_level + 1e-4 and (diff > 1e-4).float().mean() < 0.05, (name, diff.max())
        # the small-first order (op at 100 px, then resize) gives another image
        small_first = T.functional.resize(op(Image.fromarray(small[i].permute(1, 2, 0).numpy())), [224, 224])
        other = normalize(T.functional.to_tensor(T.functional.hflip(small_first)))
        assert (ours[i] - other).abs()[:, keep].mean() > 5 * (ours[i] - expected).abs()[:, keep].mean() + 1e-3
    # and the device's resize matches PIL's resize (the reference's first step) to one grey level
    pil_resized = np.stack([np.asarray(Image.fromarray(img.permute(1, 2, 0).numpy()).resize((224, 224), Image.BILINEAR))
                            for img in small])
    assert np.abs(resized.permute(0, 2, 3, 1).numpy().astype(int) - pil_resized).max() <= 1


def _faces(n: int, size: int) -> np.ndarray:
    """Smooth, face-like uint8 [n, size, size, 3] images with fine detail (order-sensitive ops)."""
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for i in range(n):
        base = 120 + 80 * np.sin(6 * xx + i) * np.cos(5 * yy - i)
        detail = 25 * np.sin(40 * xx * (1 + 0.1 * i)) * np.sin(37 * yy)
        img = np.stack([base + detail * (c + 1) / 3 for c in range(3)], -1) + rng.normal(0, 3, (size, size, 3))
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return np.stack(out)


def test_ten_crop_windows_follow_torchvision():
    from torchvision import transforms as T

    for h, w in ((37, 46), (41, 37), (32, 32), (40, 51)):  # odd and even margins, portrait and landscape
        image = Image.fromarray(np.random.default_rng(h * w).integers(0, 256, (h, w, 3), dtype=np.uint8))
        crops = T.TenCrop(32)(image)
        pixels = np.asarray(image)
        for crop, (top, left, mirrored) in zip(crops, ten_crop_windows(h, w, 32)):
            window = pixels[top:top + 32, left:left + 32]
            assert np.array_equal(np.asarray(crop), window[:, ::-1] if mirrored else window)


def test_ten_crop_cache_equals_the_reference_crops(tmp_path, cache):
    """Frames of several sizes: every crop the workers slice equals the reference's resize + TenCrop."""
    from adadf.data.index import ImageIndex
    from torchvision import transforms as T

    root = tmp_path / "frames"
    root.mkdir()
    paths = []
    for i, (w, h) in enumerate(((60, 48), (47, 53), (48, 60), (71, 50))):
        name = f"{i}.png"
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / name)
        paths.append(name)
    index = ImageIndex(root, paths, [0, 1, 0, 1], ["a", "b"])
    recipe = tencrop_recipe(32)
    train_set, _ = fast._ten_crop_sets(index, index, recipe)
    assert isinstance(train_set, TenCropCachedDataset)
    reference = T.Compose([T.Resize(recipe.resize), T.TenCrop(recipe.image_size)])
    for i in range(len(index)):
        crops, label = train_set[i]
        assert crops.shape == (10, 3, 32, 32) and crops.dtype == torch.uint8 and label == index.labels[i]
        expected = np.stack([np.asarray(c) for c in reference(load_rgb(root / paths[i]))])
        assert np.array_equal(crops.permute(0, 2, 3, 1).numpy(), expected), i


def test_sfew_device_pipeline(tmp_path, cache):
    """Ten-crop on pipeline=device: uint8 crops from the workers, per-crop RandAugment batched on the
    device; evaluation equals the reference's crops + normalise."""
    sfew = fakedata.write_sfew(tmp_path / "sfew", per_class=2, size=48)
    bundle = build("sfew", root=str(sfew), pipeline="device", image_size=32, batch_size=2, num_workers=0)
    assert bundle.pipeline == "device" and bundle.num_crops == 10
    images, labels = next(iter(bundle.train_loader))
    assert images.shape == (2, 10, 3, 32, 32) and images.dtype == torch.uint8
    transform = bundle.train_batch_transform
    assert isinstance(transform, ResizeAugmentNormalizeErase)
    assert (transform.augment.num_ops, transform.augment.magnitude) == (5, 3.0)
    out = transform(images.flatten(0, 1))
    assert out.shape == (20, 3, 32, 32) and out.dtype == torch.float32
    reference = build("sfew", root=str(sfew), pipeline="reference", image_size=32, batch_size=2, num_workers=0)
    ours, _ = next(iter(bundle.test_loader))
    theirs, _ = next(iter(reference.test_loader))
    torch.testing.assert_close(bundle.eval_batch_transform(ours.flatten(0, 1)), theirs.flatten(0, 1),
                               rtol=0, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_device_pipeline_cuda_matches_cpu():
    """The exact-order transform on CUDA: same plan, same flips and erasing as on the CPU, up to the
    float resize (CUDA) vs uint8 kernel (CPU) and float32 grid_sample."""
    recipe = standard_recipe(224)
    small = torch.from_numpy(_faces(8, 100)).permute(0, 3, 1, 2).contiguous()
    cpu_tf, gpu_tf = fast.device_train_transform(recipe), fast.device_train_transform(recipe)
    torch.manual_seed(1)
    cpu = cpu_tf(small)
    torch.manual_seed(1)
    gpu = gpu_tf(small.cuda())
    assert gpu.is_cuda and gpu.shape == cpu.shape == (8, 3, 224, 224)
    assert torch.equal((gpu == 0).all(1).cpu(), (cpu == 0).all(1))  # same erased rectangles
    assert (gpu.cpu() - cpu).abs().mean() < 0.05


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
    for needle in ("before", "Flip commutes", "geometric", "Sharpness", "uint8", "Random streams", "ten-crop",
                   "in its own order", "small_first", "grid_sample"):
        assert needle in doc
    assert dataclasses.is_dataclass(standard_recipe())
