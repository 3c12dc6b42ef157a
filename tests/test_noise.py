"""dataset.label_noise (adadf.data.noise) and the training loader's recorded delivery order."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from torch.utils.data import DataLoader, RandomSampler, TensorDataset

import fakedata
from fakedata import build
from adadf.data.bundle import make_loader
from adadf.data.noise import flip_labels
from adadf.data.raf import read_raf
from adadf.data.samplers import ClassBalancedSampler
from adadf.data.synthetic import load_or_generate

TINY = dict(train_size=70, test_size=35, image_size=32, batch_size=8, num_workers=0)


@pytest.mark.parametrize("fraction,n,classes", [(0.1, 100, 7), (0.2, 1003, 7), (0.3, 77, 8), (0.45, 12, 2)])
def test_flips_exactly_round_p_n_to_another_class(fraction, n, classes):
    clean = [i % classes for i in range(n)]
    noisy = flip_labels(clean, classes, fraction, seed=3)
    changed = [i for i, (a, b) in enumerate(zip(clean, noisy)) if a != b]
    assert len(changed) == round(fraction * n)  # exactly, never "about"
    assert all(0 <= b < classes for b in noisy)
    assert flip_labels(clean, classes, fraction, seed=3) == noisy  # seeded
    assert flip_labels(clean, classes, fraction, seed=4) != noisy
    assert flip_labels(clean, classes, 0.0, seed=3) == clean


def test_flipped_labels_spread_over_the_other_classes():
    clean = [0] * 6000
    noisy = flip_labels(clean, 7, 0.5, seed=0)
    counts = torch.bincount(torch.tensor(noisy), minlength=7).tolist()
    assert counts[0] == 3000  # the flipped ones never land on their own class
    assert all(400 < c < 600 for c in counts[1:])  # uniform over the 6 others (expected 500 each)


def test_same_seed_same_flips_in_another_process():
    clean = [i % 7 for i in range(500)]
    code = ("import json; from adadf.data.noise import flip_labels; "
            "print(json.dumps(flip_labels([i % 7 for i in range(500)], 7, 0.2, seed=11)))")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    torch.manual_seed(123)  # global RNG state must not matter
    assert json.loads(other.stdout) == flip_labels(clean, 7, 0.2, seed=11)


def test_synthetic_uses_the_one_mechanism_and_keeps_test_and_val_clean(tmp_path):
    data = load_or_generate(tmp_path, train_size=70, test_size=35, image_size=32, ambiguity=0.0, seed=0)
    clean = data["train_labels"].tolist()
    bundle = build("synthetic", root=str(tmp_path), label_noise=0.3, loader_seed=5, **TINY)
    assert bundle.clean_train_labels == clean
    assert bundle.train_labels == flip_labels(clean, 7, 0.3, seed=5)  # noise_seed null: the run's seed
    flipped = bundle.flipped()
    assert len(flipped) == 21 and all(f.clean != f.noisy for f in flipped)
    assert flipped[0].path == f"synthetic/train/{flipped[0].index:06d}"
    assert torch.cat([y for _, y in bundle.clean_train_loader]).tolist() == bundle.train_labels
    assert torch.cat([y for _, y in bundle.test_loader]).tolist() == data["test_labels"].tolist()
    seeded = build("synthetic", root=str(tmp_path), label_noise=0.3, noise_seed=9, loader_seed=5, **TINY)
    assert seeded.train_labels == flip_labels(clean, 7, 0.3, seed=9)
    plain = build("synthetic", root=str(tmp_path), loader_seed=5, **TINY)
    assert plain.clean_train_labels is None and plain.flipped() == [] and plain.train_labels == clean

    held = build("synthetic", root=str(tmp_path), label_noise=0.3, val_fraction=0.2, **TINY)
    val_labels = torch.cat([y for _, y in held.val_loader]).tolist()
    val_indices = held.val_loader.dataset.indices
    assert val_labels == [clean[i] for i in val_indices]  # validation labels stay clean
    assert len(held.flipped()) == round(0.3 * len(held.train_labels))


def test_every_image_dataset_gets_label_noise(tmp_path, monkeypatch):
    monkeypatch.setenv("ADADF_CACHE_DIR", str(tmp_path / "cache"))
    root = fakedata.write_raf(tmp_path / "raf", per_class=4, size=40, test_per_class=2)
    for pipeline in ("reference", "fast"):
        bundle = build("raf", root=str(root), pipeline=pipeline, label_noise=0.25, image_size=32, batch_size=4,
                       num_workers=0)
        assert len(bundle.flipped()) == 7 and bundle.flipped()[0].path.startswith("Image/aligned/train_")
        assert torch.cat([y for _, y in bundle.clean_train_loader]).tolist() == bundle.train_labels
        assert torch.cat([y for _, y in bundle.test_loader]).tolist() == read_raf(root)[1].labels  # untouched
    folder = fakedata.write_folder(tmp_path / "folder", per_class=3, size=36, test_per_class=1)
    bundle = build("folder", root=str(folder), num_classes=3, label_noise=0.5, image_size=32, batch_size=2,
                   num_workers=0)
    assert len(bundle.flipped()) == round(0.5 * 9)


def _batches(loader):
    return [(x.clone(), y.clone()) for x, y in loader]


def _same(a, b):
    return len(a) == len(b) and all(torch.equal(x, u) and torch.equal(y, v) for (x, y), (u, v) in zip(a, b))


def test_recording_does_not_change_the_random_stream():
    """The recorded loader delivers bit-identical batches to a plain ``shuffle=True`` loader, over
    epochs and after the trainer-style reseeding of the sampler's generator."""
    data = TensorDataset(torch.randn(23, 3), torch.arange(23) % 5)
    recorded = make_loader(data, batch_size=4, num_workers=0, train=True, seed=7)
    plain = DataLoader(data, batch_size=4, shuffle=True, drop_last=True, generator=torch.Generator().manual_seed(7))
    assert isinstance(recorded.sampler, RandomSampler)
    for _ in range(3):
        assert _same(_batches(recorded), _batches(plain))
    recorded.sampler.generator = torch.Generator().manual_seed(99)
    plain.sampler.generator = torch.Generator().manual_seed(99)
    assert _same(_batches(recorded), _batches(plain))

    labels = (torch.arange(23) % 5).tolist()
    balanced = make_loader(data, batch_size=4, num_workers=0, train=True, seed=0,
                           sampler=ClassBalancedSampler(labels, 5, seed=3))
    reference = DataLoader(data, batch_size=4, sampler=ClassBalancedSampler(labels, 5, seed=3), drop_last=True)
    balanced.sampler.set_epoch(2)
    reference.sampler.set_epoch(2)
    assert _same(_batches(balanced), _batches(reference))


@pytest.mark.parametrize("workers,balanced", [(0, False), (2, False), (0, True)])
def test_train_order_matches_the_labels_seen(tmp_path, workers, balanced):
    labels = [i % 4 for i in range(30)]
    data = TensorDataset(torch.arange(30).float().view(30, 1), torch.tensor(labels))
    sampler = ClassBalancedSampler(labels, 4, seed=1) if balanced else None
    loader = make_loader(data, batch_size=4, num_workers=workers, train=True, seed=2, sampler=sampler)
    for _ in range(2):
        seen = torch.cat([x.flatten() for x, _ in loader]).long().tolist()
        order = list(loader.sampler.order)
        assert seen == order[: len(seen)] and len(seen) == len(loader) * 4


def test_bundle_train_order_is_the_delivered_samples(tmp_path):
    bundle = build("synthetic", root=str(tmp_path), label_noise=0.2, **TINY)
    for _ in range(2):  # a new order every epoch
        seen = torch.cat([y for _, y in bundle.train_loader]).tolist()
        order = bundle.train_order()
        assert len(order) == len(seen) == len(bundle.train_loader) * 8
        assert [bundle.train_labels[i] for i in order] == seen
