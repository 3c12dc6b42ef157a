"""The built-in synthetic expression dataset: determinism, labels, cache, builder, transforms."""
from __future__ import annotations

import pickle

import pytest
import torch
import torch.nn.functional as F
from fakedata import build

from adadf.data import synthetic
from adadf.data.cache import cache_dir
from adadf.data.synthetic import (
    CLASS_NAMES,
    EvalBatchTransform,
    TrainBatchTransform,
    UInt8ImageDataset,
    generate_synthetic,
    load_or_generate,
)
from adadf.errors import UserError

C = len(CLASS_NAMES)
SMALL = dict(train_size=70, test_size=35, image_size=32, ambiguity=0.0, seed=0)


@pytest.fixture(scope="module")
def small() -> dict[str, torch.Tensor]:
    return generate_synthetic(**SMALL)


def test_class_names_follow_raf_db_order():
    assert CLASS_NAMES == ["Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral"]


def test_shapes_and_dtypes(small):
    assert small["train_images"].shape == (70, 3, 32, 32)
    assert small["test_images"].shape == (35, 3, 32, 32)
    assert small["train_images"].dtype == small["test_images"].dtype == torch.uint8
    for key in ("train_labels", "train_labels", "test_labels"):
        assert small[key].dtype == torch.int64
        assert int(small[key].min()) >= 0 and int(small[key].max()) < C
    assert small["train_soft_labels"].shape == (70, C) and small["train_soft_labels"].dtype == torch.float32
    assert small["test_soft_labels"].shape == (35, C)
    # Images are not blank: they vary across and within samples.
    assert small["train_images"].float().std() > 20


def test_same_seed_same_data_other_seed_other_data(small):
    again = generate_synthetic(**SMALL)
    assert again.keys() == small.keys()
    for key in small:
        assert torch.equal(again[key], small[key]), key
    other = generate_synthetic(**{**SMALL, "seed": 1})
    assert not torch.equal(other["train_images"], small["train_images"])
    assert not torch.equal(other["test_images"], small["test_images"])


def test_classes_are_balanced():
    data = generate_synthetic(**{**SMALL, "train_size": 72, "test_size": 35})
    train_counts = torch.bincount(data["train_labels"], minlength=C)
    assert int(train_counts.max() - train_counts.min()) <= 1 and int(train_counts.sum()) == 72
    assert torch.equal(torch.bincount(data["test_labels"], minlength=C), torch.full((C,), 5))


def test_soft_labels_one_hot_without_ambiguity(small):
    soft = small["train_soft_labels"]
    assert torch.equal(soft, F.one_hot(small["train_labels"], C).float())
    assert torch.equal(small["test_soft_labels"], F.one_hot(small["test_labels"], C).float())


def test_ambiguity_blends_two_classes():
    data = generate_synthetic(**{**SMALL, "train_size": 350, "test_size": 140, "ambiguity": 0.5})
    for split, labels in (("train", data["train_labels"]), ("test", data["test_labels"])):
        soft = data[f"{split}_soft_labels"]
        assert torch.allclose(soft.sum(1), torch.ones(len(soft)))
        nonzero = (soft > 0).sum(1)
        assert set(nonzero.tolist()) <= {1, 2}
        blended = nonzero == 2
        assert 0.35 < blended.float().mean().item() < 0.65
        # The stated label keeps the larger share, the other class gets 0.2..0.5.
        rows = soft[blended]
        assert torch.all(soft[torch.arange(len(soft)), labels] >= 0.5 - 1e-6)
        minor = rows.sort(1, descending=True).values[:, 1]
        assert torch.all((minor >= 0.2 - 1e-6) & (minor <= 0.5 + 1e-6))


def test_cache_is_written_once_then_loaded(tmp_path, monkeypatch):
    calls = []
    real = synthetic.generate_synthetic

    def counting(**params):
        calls.append(params)
        return real(**params)

    monkeypatch.setattr(synthetic, "generate_synthetic", counting)
    first = load_or_generate(tmp_path, **SMALL)
    files = sorted(tmp_path.glob("*.pt"))
    assert len(calls) == 1 and len(files) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [files[0].name, files[0].name + ".sha256"]
    second = load_or_generate(tmp_path, **SMALL)
    assert len(calls) == 1  # loaded, not regenerated
    for key in first:
        assert torch.equal(first[key], second[key])
    # Other params -> another file; a corrupt file is regenerated.
    load_or_generate(tmp_path, **{**SMALL, "seed": 3})
    assert len(calls) == 2 and len(list(tmp_path.glob("*.pt"))) == 2
    files[0].write_bytes(b"not a torch file")
    third = load_or_generate(tmp_path, **SMALL)
    assert len(calls) == 3 and torch.equal(third["train_images"], first["train_images"])
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_cache_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("ADADF_CACHE_DIR", raising=False)
    assert cache_dir("synthetic") == tmp_path / "xdg" / "adadf" / "synthetic"
    monkeypatch.setenv("ADADF_CACHE_DIR", str(tmp_path / "own"))
    assert cache_dir("synthetic") == tmp_path / "own" / "synthetic"
    assert cache_dir("images") == tmp_path / "own" / "images"
    with pytest.raises(ValueError):
        cache_dir("elsewhere")
    monkeypatch.chdir(tmp_path)
    build("synthetic", train_size=14, test_size=7, image_size=32, batch_size=4)
    assert len(list((tmp_path / "own" / "synthetic").glob("*.pt"))) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["own"]  # nothing in the cwd


@pytest.mark.parametrize(
    "key, value",
    [
        ("num_classes", 8),
        ("label_noise", 1.0),
        ("label_noise", -0.1),
        ("ambiguity", 1.5),
        ("train_size", 3),
        ("test_size", 0),
        ("image_size", 16),
        ("batch_size", 0),
        ("val_fraction", 1.0),
    ],
)
def test_bad_values_name_the_key(tmp_path, key, value):
    with pytest.raises(UserError, match=rf"dataset\.{key}"):
        build("synthetic", root=str(tmp_path), **{key: value})
    assert not list(tmp_path.iterdir())  # rejected before generating anything


def test_build_synthetic_bundle(tmp_path):
    bundle = build("synthetic", root=str(tmp_path), train_size=70, test_size=35, image_size=32, batch_size=16,
                   label_noise=0.2, loader_seed=5)
    assert bundle.num_classes == C and bundle.class_names == CLASS_NAMES
    images, labels = next(iter(bundle.train_loader))
    assert images.shape == (16, 3, 32, 32) and images.dtype == torch.uint8 and labels.dtype == torch.int64
    assert len(bundle.train_loader) == 70 // 16  # drop_last
    assert sum(len(y) for _, y in bundle.test_loader) == 35
    data = load_or_generate(tmp_path, train_size=70, test_size=35, image_size=32, ambiguity=0.0, seed=0)
    clean_images, clean_labels = zip(*bundle.clean_train_loader)
    assert torch.equal(torch.cat(clean_images), data["train_images"])  # every sample once, in order
    assert torch.cat(clean_labels).tolist() == bundle.train_labels  # the labels training sees (noisy)
    assert bundle.clean_train_labels == data["train_labels"].tolist()
    assert len(bundle.flipped()) == round(0.2 * 70) and bundle.train_paths[3] == "synthetic/train/000003"
    # loader_seed fixes the shuffle order.
    again = build("synthetic", root=str(tmp_path), train_size=70, test_size=35, image_size=32, batch_size=16,
                  label_noise=0.2, loader_seed=5)
    assert torch.equal(next(iter(again.train_loader))[1], labels)
    assert isinstance(bundle.train_batch_transform, TrainBatchTransform)
    assert isinstance(bundle.eval_batch_transform, EvalBatchTransform)
    pickle.dumps((bundle.train_batch_transform, bundle.eval_batch_transform))


def test_uint8_dataset(small):
    ds = UInt8ImageDataset(small["test_images"], small["test_labels"])
    image, label = ds[3]
    assert len(ds) == 35 and image.dtype == torch.uint8 and image.shape == (3, 32, 32)
    assert isinstance(label, int) and label == int(small["test_labels"][3])
    with pytest.raises(ValueError):
        UInt8ImageDataset(small["test_images"].float(), small["test_labels"])


def test_batch_transforms(small):
    images = small["train_images"][:8]
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    expected = (images.float() / 255 - mean) / std
    out = EvalBatchTransform()(images)
    assert out.dtype == torch.float32 and torch.allclose(out, expected, atol=1e-6)

    torch.manual_seed(0)
    aug = TrainBatchTransform()(images)
    assert aug.shape == (8, 3, 32, 32) and aug.dtype == torch.float32
    assert not torch.allclose(aug, expected)
    assert expected.min() - 1e-4 <= aug.min() and aug.max() <= expected.max() + 1e-4  # still normalised
    torch.manual_seed(0)
    assert torch.equal(TrainBatchTransform()(images), aug)  # global torch RNG -> reproducible

    # Flip only: each sample is either unchanged or mirrored, and both happen.
    torch.manual_seed(1)
    flipped = TrainBatchTransform(max_translate=0.0, scale=(1.0, 1.0))(small["train_images"][:32])
    ref = EvalBatchTransform()(small["train_images"][:32])
    same = torch.isclose(flipped, ref, atol=1e-5).flatten(1).all(1)
    mirrored = torch.isclose(flipped, ref.flip(-1), atol=1e-5).flatten(1).all(1)
    assert torch.all(same | mirrored) and same.any() and mirrored.any()


def test_classes_are_learnable_from_random_features():
    """A linear probe on frozen random conv features beats chance (1/7) by far."""
    data = generate_synthetic(train_size=700, test_size=350, image_size=32, ambiguity=0.0, seed=0)
    gen = torch.Generator().manual_seed(0)
    kernels = torch.randn(64, 3, 5, 5, generator=gen) / 5

    def features(images: torch.Tensor) -> torch.Tensor:  # [N, 64 * 6 * 6]
        x = F.relu(F.conv2d(EvalBatchTransform()(images), kernels, padding=2))
        return F.adaptive_avg_pool2d(x, 6).flatten(1)

    x_train, x_test = features(data["train_images"]), features(data["test_images"])
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-6
    x_train, x_test = (x_train - mu) / sd, (x_test - mu) / sd
    weight = torch.zeros(x_train.shape[1], C, requires_grad=True)
    bias = torch.zeros(C, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], max_iter=100)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x_train @ weight + bias, data["train_labels"]) + 1e-2 * weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        accuracy = ((x_test @ weight + bias).argmax(1) == data["test_labels"]).float().mean().item()
    assert accuracy > 0.3
