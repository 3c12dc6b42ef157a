"""BatchRandAugment against timm's own PIL ops, op by op, plus the batch-level behaviour: a fixed
sequence of ops per batch (no per-image or per-op work), no read of device values, one copy."""
from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import timm.data.auto_augment as aa
import torch
from PIL import Image

from adadf.data import batch_randaugment as br
from adadf.data import fast
from adadf.data.transforms import AtLeastBits, standard_recipe

FILL = (124, 116, 104)
HPARAMS = {"translate_const": 117, "img_mean": FILL, "interpolation": Image.BILINEAR}
GEOMETRIC = {"Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel"}
SIGNED = GEOMETRIC


def _structured(n: int = 3, h: int = 40, w: int = 48, seed: int = 0) -> np.ndarray:
    """Smooth waves plus mild noise (uint8 [n, h, w, 3]): interpolation differences stay small."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    imgs = []
    for i in range(n):
        chans = [128 + 90 * np.sin(xx / (5 + i) + c) * np.cos(yy / (7 + c) + i) for c in range(3)]
        img = np.stack(chans, -1) * (0.6 + 0.2 * i) + rng.normal(0, 6, (h, w, 3))
        imgs.append(np.clip(img, 0, 255).astype(np.uint8))
    return np.stack(imgs)


IMAGES = _structured()


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


def _to_numpy(x: torch.Tensor) -> np.ndarray:
    return x.permute(0, 2, 3, 1).cpu().numpy().astype(np.int64)


def _timm_op(name: str, magnitude: float, images: np.ndarray) -> np.ndarray:
    """timm's AugmentOp (p=1, mstd=0, bilinear), with the project's Posterize bit floor."""
    op = aa.AugmentOp(name, prob=1.0, magnitude=magnitude, hparams=HPARAMS)
    if name == "Posterize":
        op.level_fn = AtLeastBits(op.level_fn, 1)
    return np.stack([np.asarray(op(Image.fromarray(img))) for img in images]).astype(np.int64)


def _single_op_plan(name: str, magnitude: float, sign: float, n: int) -> br.Plan:
    """One slot in which every image draws ``name`` at ``magnitude`` and ``sign``."""
    return br.Plan(ops=torch.full((1, n), br.OP_NAMES.index(name)), apply=torch.ones(1, n, dtype=torch.bool),
                   magnitudes=torch.full((1, n), magnitude, dtype=torch.float64),
                   signs=torch.full((1, n), sign, dtype=torch.float64))


def _ours(name: str, magnitude: float, sign: float, images: np.ndarray, exact: bool = True) -> np.ndarray:
    """The op through the batched path the pipeline runs (apply_plan: all stages, where-selected)."""
    ra = br.BatchRandAugment(img_mean=FILL, exact_geometry=exact)
    return _to_numpy(ra.apply_plan(_to_tensor(images), _single_op_plan(name, magnitude, sign, len(images))))


def _assert_close(name: str, ours: np.ndarray, ref: np.ndarray) -> None:
    diff = np.abs(ours - ref)
    if name == "Rotate":  # torch's sin/cos vs libm's may, rarely, move a pixel by one level
        assert diff.max() <= 1 and diff.mean() < 0.002, (name, diff.max(), diff.mean())
    else:  # Pillow's integer / float32 / double formulas reproduced exactly
        assert diff.max() == 0, (name, diff.max(), diff.mean())


@pytest.mark.parametrize("name", br.OP_NAMES)
def test_op_matches_timm(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    signs = (1.0, -1.0) if name in SIGNED else (1.0,)
    for sign in signs:
        # timm flips with random.random() > 0.5; pin it to the sign under test
        monkeypatch.setattr(aa, "_randomly_negate", (lambda v: v) if sign > 0 else (lambda v: -v))
        for magnitude in (0.0, 1.0, 3.7, 5.0, 9.0, 10.0):
            ref = _timm_op(name, magnitude, IMAGES)
            _assert_close(name, _ours(name, magnitude, sign, IMAGES), ref)


IMAGES_224 = _structured(n=2, h=224, w=224, seed=5)  # the recipe's size: what pipeline=device augments


@pytest.mark.parametrize("name", br.OP_NAMES)
def test_op_matches_timm_at_224_px(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every op at the paper's 224 px (the size the exact-order device pipeline augments at), exact
    and float32 (the pipeline's) geometry."""
    monkeypatch.setattr(aa, "_randomly_negate", lambda v: -v)
    ref = _timm_op(name, 6.0, IMAGES_224)
    _assert_close(name, _ours(name, 6.0, -1.0, IMAGES_224), ref)
    diff = np.abs(_ours(name, 6.0, -1.0, IMAGES_224, exact=False) - ref)
    if name in GEOMETRIC:
        assert diff.max() <= 1 and diff.mean() < 0.05, (name, diff.max(), diff.mean())
    else:
        assert diff.max() == 0, name


@pytest.mark.parametrize("name", sorted(GEOMETRIC))
def test_fast_geometry_is_close(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """exact_geometry=False (float32 grid_sample): off by at most one level, on few pixels."""
    for sign in (1.0, -1.0):
        monkeypatch.setattr(aa, "_randomly_negate", (lambda v: v) if sign > 0 else (lambda v: -v))
        for magnitude in (1.0, 5.0, 9.0):
            diff = np.abs(_ours(name, magnitude, sign, IMAGES, exact=False) - _timm_op(name, magnitude, IMAGES))
            assert diff.max() <= 1 and diff.mean() < 0.05, (name, diff.max(), diff.mean())


def _edge_images() -> np.ndarray:
    """Flat, two-level and skewed-histogram images: the LUT corner cases of Equalize/AutoContrast."""
    rng = np.random.default_rng(1)
    flat = np.full((16, 20, 3), 77, np.uint8)
    two = np.where(rng.random((16, 20, 1)) < 0.3, 10, 200).astype(np.uint8).repeat(3, -1)
    skew = rng.integers(0, 4, (16, 20, 3)).astype(np.uint8)
    skew[0, 0] = 255  # one bright pixel as the last bin, so the LUT reaches 256 before clipping
    mixed = np.concatenate([flat[..., :1], two[..., :1], skew[..., :1]], -1)
    tie = np.full((16, 20, 3), 10, np.uint8)
    tie[:8] = 11  # grey mean exactly 10.5: Contrast's rounding of the mean
    return np.stack([flat, two, skew, mixed, tie])


def test_auto_contrast_random_ranges() -> None:
    """Many (lo, hi) ranges: the LUT must be Pillow's double ``int(i * scale + offset)`` exactly."""
    rng = np.random.default_rng(0)
    bounds = np.sort(rng.integers(0, 256, (64, 1, 1, 3, 2)), -1)
    images = (bounds[..., 0] + rng.random((64, 6, 7, 3)) * (bounds[..., 1] - bounds[..., 0] + 1)).astype(np.uint8)
    ref = np.stack([np.asarray(aa.auto_contrast(Image.fromarray(img))) for img in images]).astype(np.int64)
    assert np.array_equal(_ours("AutoContrast", 5.0, 1.0, images), ref)


@pytest.mark.parametrize("name", ["AutoContrast", "Equalize", "Contrast", "Color", "Sharpness", "Brightness"])
def test_colour_ops_edge_cases(name: str) -> None:
    images = _edge_images()
    for magnitude in (2.0, 8.0):
        _assert_close(name, _ours(name, magnitude, 1.0, images), _timm_op(name, magnitude, images))


def test_shapes_dtypes_and_non_square() -> None:
    ra = br.BatchRandAugment(num_ops=3, magnitude=9, prob=1.0)
    images = torch.randint(0, 256, (5, 3, 17, 29), dtype=torch.uint8)
    out = ra(images, generator=torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == torch.uint8 and out.device == images.device
    with pytest.raises(ValueError):
        ra(images[:, :2])


def test_seeded_generator_is_deterministic() -> None:
    ra = br.BatchRandAugment()
    images = _to_tensor(np.concatenate([IMAGES, IMAGES]))
    a = ra(images, generator=torch.Generator().manual_seed(3))
    b = ra(images, generator=torch.Generator().manual_seed(3))
    c = ra(images, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_prob_zero_is_identity() -> None:
    images = _to_tensor(IMAGES)
    out = br.BatchRandAugment(num_ops=5, prob=0.0)(images, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, images)


def test_plan_statistics() -> None:
    """Ops uniform with replacement, coin rate = prob, magnitudes Normal(m, std) clipped to [0, 10]."""
    ra = br.BatchRandAugment(num_ops=3, magnitude=9.0, magnitude_std=2.0, prob=0.5)
    plan = ra.plan(20000, generator=torch.Generator().manual_seed(0))
    applied = plan.ops[plan.apply]
    n = plan.apply.numel()
    assert abs(applied.numel() / n - 0.5) < 0.01
    counts = torch.bincount(applied, minlength=len(br.OP_NAMES)).double()
    expected = applied.numel() / len(br.OP_NAMES)
    assert ((counts - expected).abs() < 5 * expected ** 0.5).all(), counts
    m = plan.magnitudes
    assert m.min() >= 0 and m.max() == 10.0
    assert abs((m == 10.0).double().mean().item() - 0.309) < 0.02  # P(N(9, 2) > 10)
    assert abs((plan.signs < 0).double().mean().item() - 0.5) < 0.01


def test_every_image_gets_its_own_op_only() -> None:
    """Images grouped by stage, ops picked per image within a stage: each image of a mixed batch
    comes out exactly as it does alone with its own draws (no image's op, histogram, argument or
    matrix leaks into another's, nor its place in the batch), and the batch uses every op."""
    ra = br.BatchRandAugment(num_ops=2, prob=0.7, img_mean=FILL)
    images = torch.randint(0, 256, (120, 3, 9, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    plan = ra.plan(len(images), generator=torch.Generator().manual_seed(5))
    assert set(plan.ops[plan.apply].tolist()) == set(range(len(br.OP_NAMES)))
    batched = ra.apply_plan(images, plan)
    for i in range(len(images)):
        alone = br.Plan(*(getattr(plan, f)[:, i:i + 1] for f in ("ops", "apply", "magnitudes", "signs")))
        assert torch.equal(batched[i:i + 1], ra.apply_plan(images[i:i + 1], alone)), i
    unchanged = ~plan.apply.any(0)
    assert torch.equal(batched[unchanged], images[unchanged]) and not torch.equal(batched, images)


@pytest.mark.parametrize("num_ops, magnitude, noisy", [(3, 5, False), (5, 3, True)])
def test_whole_plan_matches_timm_sequence(num_ops: int, magnitude: float, noisy: bool,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The batched run equals timm's ops applied one image at a time with the same draws."""
    images = _structured(n=8, h=33, w=41, seed=2)
    if noisy:
        images = np.random.default_rng(3).integers(0, 256, images.shape).astype(np.uint8)
    ra = br.BatchRandAugment(num_ops=num_ops, magnitude=magnitude, magnitude_std=2.0, prob=0.8, img_mean=FILL)
    plan = ra.plan(len(images), generator=torch.Generator().manual_seed(11))
    ours = _to_numpy(ra.apply_plan(_to_tensor(images), plan))
    for i, img in enumerate(images):
        pil = Image.fromarray(img)
        for slot in range(plan.ops.shape[0]):
            if not plan.apply[slot, i]:
                continue
            sign = plan.signs[slot, i].item()
            monkeypatch.setattr(aa, "_randomly_negate", (lambda v: v) if sign > 0 else (lambda v: -v))
            name = br.OP_NAMES[plan.ops[slot, i].item()]
            op = aa.AugmentOp(name, prob=1.0, magnitude=plan.magnitudes[slot, i].item(), hparams=HPARAMS)
            if name == "Posterize":
                op.level_fn = AtLeastBits(op.level_fn, 1)
            pil = op(pil)
        diff = np.abs(ours[i] - np.asarray(pil).astype(np.int64))
        assert diff.mean() < 0.002, (i, diff.mean(), diff.max())  # exact unless Rotate is off by one


def test_posterize_never_uses_zero_bits() -> None:
    m = torch.linspace(0, 10, 101, dtype=torch.float64)
    bits = br.level_posterize(m, 1)
    assert bits.min() == 1 and bits.max() == 4
    assert torch.equal(br.level_posterize(torch.tensor([2.4, 2.5, 9.99]), 1), torch.tensor([1.0, 1.0, 3.0]))
    x = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, -1)
    assert set(np.unique(_ours("Posterize", 0.0, 1.0, x)).tolist()) == {0, 128}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    ra = br.BatchRandAugment(num_ops=3, magnitude=7, prob=0.9, img_mean=FILL)
    images = _to_tensor(_structured(n=16, seed=4))
    plan = ra.plan(len(images), generator=torch.Generator().manual_seed(0))
    cpu = ra.apply_plan(images, plan)
    gpu = ra.apply_plan(images.cuda(), plan)
    assert gpu.is_cuda and gpu.dtype == torch.uint8
    diff = (gpu.cpu().int() - cpu.int()).abs().float()
    assert diff.mean() < 0.1, diff.mean()
    out = ra(images.cuda(), generator=torch.Generator().manual_seed(1))
    assert out.is_cuda and out.shape == images.shape


def test_from_config_reads_timm_strings() -> None:
    ra = br.BatchRandAugment.from_config("rand-m5-n3-mstd0.5", img_mean=FILL)
    assert (ra.num_ops, ra.magnitude, ra.magnitude_std, ra.prob, ra.img_mean) == (3, 5.0, 0.5, 0.5, FILL)
    ra = br.BatchRandAugment.from_config("rand-m3-n5-mstd0.5-p0.7-mmax12")
    assert (ra.num_ops, ra.magnitude, ra.prob, ra.magnitude_max) == (5, 3.0, 0.7, 12.0)
    assert br.BatchRandAugment.from_config("rand-mstd101").magnitude_std == float("inf")
    for bad in ("rand-m9-inc1", "rand-tweights", "augmix-m5"):
        with pytest.raises(ValueError):
            br.BatchRandAugment.from_config(bad)


# ------------------------------------------------------------- launches, syncs and copies per batch
def _aug_launches():
    """benchmarks/aug_launches.py, whose op counter the tests share."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "aug_launches.py"
    spec = importlib.util.spec_from_file_location("aug_launches", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _device_recipe(randaugment: str = "rand-m5-n3-mstd0.5") -> fast.ResizeAugmentNormalizeErase:
    """pipeline=device's training transform (resize, RandAugment, flip, normalise, erase) at 32 px."""
    return fast.device_train_transform(dataclasses.replace(standard_recipe(32), randaugment=randaugment))


def test_device_recipe_runs_a_fixed_number_of_ops() -> None:
    """The whole device recipe dispatches the same ops at batch 8 and 32 and for every spread of
    the ops over the images (mixed, every image drawing an op, none): nothing per image or per op."""
    launches = _aug_launches()
    counts = {}
    for randaugment in ("rand-m5-n3-mstd0.5", "rand-m9-n3-mstd0.5-p1", "rand-m5-n3-mstd0.5-p0"):
        transform = _device_recipe(randaugment)
        for n in (8, 32):
            for size in (20, 32):  # resized to 32 px, or already there
                images = launches.face_like(n, size, seed=n)
                transform(images)  # constants are made on first use
                torch.manual_seed(n)
                counts[randaugment, n, size] = launches.aten_counts(transform, images)
    for size in (20, 32):
        top_level = {key: c["top_level"] for key, c in counts.items() if key[2] == size}
        assert len(set(top_level.values())) == 1 and max(top_level.values()) <= 600, top_level
    # Every event, nested ones too, at the recipe's size (torch's CPU uint8 resize kernel selects
    # each image internally): the same but for torch's internals on empty stages (a few events).
    every = [c["all"] for key, c in counts.items() if key[2] == 32]
    assert max(every) - min(every) <= 32, counts


def test_device_recipe_never_reads_the_device() -> None:
    """No ``.item()``, ``nonzero``, ``bool(tensor)`` or shape from device data: the whole recipe runs
    on meta tensors, which have no values (reading one raises), with both geometry paths."""
    with pytest.raises(RuntimeError):
        bool(torch.zeros(1, device="meta"))  # what a sync would do
    transform = _device_recipe("rand-m9-n3-mstd0.5-p1")
    out = transform(torch.empty(8, 3, 20, 20, dtype=torch.uint8, device="meta"))
    assert out.device.type == "meta" and out.shape == (8, 3, 32, 32) and out.dtype == torch.float32
    exact = br.BatchRandAugment(num_ops=4, prob=1.0, exact_geometry=True)
    assert exact(torch.empty(8, 3, 17, 29, dtype=torch.uint8, device="meta")).shape == (8, 3, 17, 29)


def test_device_recipe_copies_three_small_tensors_per_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Host-to-device copies per batch: the plan's rows, the flips, the erasing boxes, at any batch
    size (grouping by op copied an index tensor per op and slot)."""
    copies: list[tuple[int, ...]] = []

    def counting(values: torch.Tensor, device: torch.device) -> torch.Tensor:
        copies.append(tuple(values.shape))
        return values.to(device)

    monkeypatch.setattr(br, "to_device", counting)
    monkeypatch.setattr(fast, "to_device", counting)
    transform = _device_recipe("rand-m9-n3-mstd0.5-p1")
    images = torch.randint(0, 256, (32, 3, 20, 20), dtype=torch.uint8)
    transform(images)  # constants (mean, 1/std, fill, grid bounds) are copied on first use only
    for n in (8, 32):
        copies.clear()
        transform(images[:n])
        assert copies == [(3, n, 9), (n,), (n, 4)], copies


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_device_recipe_does_not_sync_on_cuda() -> None:
    """On CUDA, torch's sync debug mode raises on any host-device synchronisation."""
    transform = _device_recipe()
    images = torch.randint(0, 256, (64, 3, 20, 20), dtype=torch.uint8).cuda()
    transform(images)  # constants copied once
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            out = transform(images)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert out.is_cuda and out.shape == (64, 3, 32, 32)
