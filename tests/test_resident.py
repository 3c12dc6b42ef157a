"""The device pipeline's resident data (adadf/data/resident.py): the same batches as the DataLoader it
replaces, bit for bit (indices, images, labels, over epochs, with every sampler), the same training
run, exact resume, and the placement rule with its fallbacks."""
from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

import fakedata
from fakedata import build
from adadf.data import resident, samplers
from adadf.data.bundle import rebatched
from adadf.data.resident import ResidentLoader, ResidentSet
from adadf.engine.trainer import _reseed
from test_fast import cache, raf  # noqa: F401  (fixtures)
import test_resume
from test_resume import assert_same_training_state, metrics_without_timing, train_with

SEED = 3



def device_bundles(raf: Path, **options):
    """The device pipeline's bundle as today's DataLoaders and as resident loaders, same seed."""
    common = dict(root=str(raf), pipeline="device", image_size=24, batch_size=4, num_workers=0, **options)
    return (build("raf", loader_seed=SEED, resident=False, **common),
            build("raf", loader_seed=SEED, resident=True, **common))


def epochs(loader, order, epochs: int = 2, salt: int = 0) -> list:
    """Every batch of ``epochs`` passes, each reseeded as the trainer does, with the recorded order."""
    out = []
    for epoch in range(1, epochs + 1):
        _reseed(loader, SEED, epoch, salt)
        batches = [(images.clone(), labels.clone()) for images, labels in loader]
        out.append((batches, order() if order else None))
    return out


def assert_same_batches(a, b) -> None:
    assert len(a) == len(b)
    for (batches_a, order_a), (batches_b, order_b) in zip(a, b):
        assert order_a == order_b
        assert len(batches_a) == len(batches_b) > 0
        for (xa, ya), (xb, yb) in zip(batches_a, batches_b):
            assert xa.dtype == xb.dtype == torch.uint8 and ya.dtype == yb.dtype == torch.int64
            assert xa.shape == xb.shape and xa.stride() == xb.stride()
            assert torch.equal(xa, xb) and torch.equal(ya, yb)


def assert_bundles_match(plain, held) -> None:
    assert isinstance(held.train_loader, ResidentLoader) and not isinstance(plain.train_loader, ResidentLoader)
    assert_same_batches(epochs(plain.train_loader, plain.train_order), epochs(held.train_loader, held.train_order))
    for name in ("clean_train_loader", "test_loader", "val_loader"):
        a, b = getattr(plain, name), getattr(held, name)
        if a is None:
            assert b is None
            continue
        assert isinstance(b, ResidentLoader)
        assert_same_batches(epochs(a, None, 1), epochs(b, None, 1))


@pytest.mark.parametrize("options", [{}, {"balanced": True}, {"val_fraction": 0.2, "label_noise": 0.3}],
                         ids=["shuffled", "balanced", "subset-relabeled"])
def test_resident_batches_equal_the_dataloader(raf, cache, options):
    """Two epochs of every loader: the same indices (train_order), images and labels, bit for bit."""
    plain, held = device_bundles(raf, **options)
    assert_bundles_match(plain, held)
    assert len(held.train_loader) == len(plain.train_loader) and held.train_loader.num_workers == 0
    # one set per cache file: training, clean training and validation share the training pixels
    assert len(resident.resident_sets(held)) == 2


def test_resident_batches_equal_the_dataloader_on_a_ddp_shard(raf, cache, monkeypatch):
    """Rank 1 of 2: the sharded samplers (shuffled and class-balanced) deliver the same batches."""
    monkeypatch.setattr(samplers, "process_group", lambda: (1, 2))
    for options in ({}, {"balanced": True}):
        plain, held = device_bundles(raf, **options)
        assert type(held.train_loader.sampler).__name__ == type(plain.train_loader.sampler).__name__
        assert_bundles_match(plain, held)


def test_resident_replaces_a_worker_loader_with_its_sampler(raf, cache):
    """num_workers > 0 (persistent workers today): the same batches, no worker process."""
    plain, _ = device_bundles(raf)
    workers = build("raf", loader_seed=SEED, resident=False, root=str(raf), pipeline="device", image_size=24,
                    batch_size=4, num_workers=1)
    held = resident.resident_bundle(workers, 0.5)
    assert held.train_loader.sampler is workers.train_loader.sampler
    assert type(held.train_loader.dataset).__name__ == "CachedImageDataset"
    assert_same_batches(epochs(plain.train_loader, plain.train_order), epochs(held.train_loader, held.train_order))


def test_rebatched_resident_loader(raf, cache):
    plain, held = device_bundles(raf)
    a, b = rebatched(plain.test_loader, 3), rebatched(held.test_loader, 3)
    assert isinstance(b, ResidentLoader) and b.pixels is held.test_loader.pixels
    assert_same_batches(epochs(a, None, 1), epochs(b, None, 1))


def test_other_pipelines_keep_their_loaders(raf, cache, tmp_path):
    small = build("raf", root=str(raf), pipeline="small_first", image_size=24, batch_size=4, num_workers=0,
                  resident=True)
    assert isinstance(small.train_loader, DataLoader)
    sfew = fakedata.write_sfew(tmp_path / "sfew", per_class=1, size=32)
    tencrop = build("sfew", root=str(sfew), pipeline="device", image_size=24, batch_size=2, num_workers=0,
                    resident=True)
    assert isinstance(tencrop.train_loader, DataLoader) and isinstance(tencrop.test_loader, DataLoader)


def test_cpu_placement_keeps_the_memory_map(raf, cache):
    _, held = device_bundles(raf)
    resident.place(held, torch.device("cpu"))
    assert [s.where for s in resident.resident_sets(held)] == ["memory map", "memory map"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_resident_batches_equal_the_dataloader(raf, cache):
    """On the GPU and from pinned host memory: the DataLoader's batches, moved to the GPU."""
    plain, held = device_bundles(raf, balanced=True)
    resident.place(held, torch.device("cuda"))
    assert all(s.where.startswith("cuda") for s in resident.resident_sets(held))
    on_gpu = epochs(held.train_loader, held.train_order)
    assert on_gpu[0][0][0][0].device.type == "cuda" and on_gpu[0][0][0][1].device.type == "cuda"
    to_cpu = [([(x.cpu(), y.cpu()) for x, y in batches], order) for batches, order in on_gpu]
    assert_same_batches(epochs(plain.train_loader, plain.train_order), to_cpu)
    _, pinned_set = device_bundles(raf)
    for s in resident.resident_sets(pinned_set):
        s.max_share = 1e-12  # nothing fits: pinned host memory
    resident.place(pinned_set, torch.device("cuda"))
    assert [s.where for s in resident.resident_sets(pinned_set)] == ["pinned", "pinned"]
    images, _ = next(iter(pinned_set.test_loader))
    assert images.is_pinned()
    assert_same_batches(epochs(plain.test_loader, None, 1), epochs(pinned_set.test_loader, None, 1))


# ------------------------------------------------------------------------------------ placement rule
@pytest.fixture
def fake_gpu(monkeypatch):
    """A CUDA placement on a machine without one: free memory, copy and pinning stand-ins."""
    free = {"bytes": 10 * 2**30}
    monkeypatch.setattr(resident, "gpu_free", lambda device: free["bytes"])
    monkeypatch.setattr(resident, "copy_to", lambda pixels, device: pixels.clone())
    monkeypatch.setattr(resident, "pinned", lambda pixels: pixels.clone())
    return free


def one_set(raf) -> ResidentSet:
    _, held = device_bundles(raf)
    return held.train_loader.pixels


def test_a_set_that_fits_goes_to_the_gpu(raf, cache, fake_gpu):
    pixels = one_set(raf)
    pixels.place(torch.device("cuda:0"))
    assert pixels.where == "cuda:0"


def test_a_set_above_the_share_stays_in_pinned_host_memory(raf, cache, fake_gpu, caplog):
    pixels = one_set(raf)
    fake_gpu["bytes"] = pixels.nbytes  # the set would take all of it; the share is 0.5
    with caplog.at_level(logging.INFO, logger="adadf.data.resident"):
        pixels.place(torch.device("cuda:0"))
    assert pixels.where == "pinned"
    assert "resident_max_share=0.5" in caplog.text and "the train set" in caplog.text


def test_out_of_memory_while_placing_is_one_line_then_pinned(raf, cache, fake_gpu, caplog, monkeypatch):
    def oom(pixels, device):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 368.00 MiB")

    monkeypatch.setattr(resident, "copy_to", oom)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    pixels = one_set(raf)
    with caplog.at_level(logging.INFO, logger="adadf.data.resident"):
        pixels.place(torch.device("cuda:0"))
    assert pixels.where == "pinned"
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1 and "\n" not in lines[0]
    assert "the train set" in lines[0] and "MB" in lines[0] and "10,240 MB free" in lines[0]


def test_pinning_failure_leaves_the_memory_map(raf, cache, fake_gpu, monkeypatch, caplog):
    def fail(pixels):
        raise RuntimeError("cannot pin")

    monkeypatch.setattr(resident, "pinned", fail)
    pixels = one_set(raf)
    fake_gpu["bytes"] = 0
    with caplog.at_level(logging.INFO, logger="adadf.data.resident"):
        pixels.place(torch.device("cuda:0"))
    assert pixels.where == "memory map" and "pinning failed (cannot pin)" in caplog.text


def test_resident_max_share_range():
    from adadf.config.fields import check_ranges
    from adadf.config.dataset import RafConfig
    from adadf.errors import UserError

    with pytest.raises(UserError, match="dataset.resident_max_share"):
        check_ranges(RafConfig(resident_max_share=0.0), "dataset")
    check_ranges(RafConfig(resident_max_share=1.0), "dataset")


# ------------------------------------------------------------------------------------ training runs
def run_options(tmp_path: Path, monkeypatch) -> list[str]:
    monkeypatch.setenv("ADADF_CACHE_DIR", str(tmp_path / "cache"))
    root = fakedata.write_raf(tmp_path / "raf", per_class=2, size=40, test_per_class=1)
    return ["dataset=raf", f"dataset.root={root}", "dataset.pipeline=device", "dataset.num_workers=0",
            "dataset.image_size=32", "dataset.batch_size=4", "logger=none", "trainer.progress=false"]


def test_training_run_is_the_dataloaders(tmp_path: Path, monkeypatch, caplog):
    """A short device-pipeline run on the CPU: metrics.csv and the final state equal, resident or not."""
    base = run_options(tmp_path, monkeypatch)
    with caplog.at_level(logging.INFO, logger="adadf.data.resident"):
        train_with(tmp_path / "loader", [*base, "trainer.epochs=2", "dataset.resident=false"])
        assert "memory map" not in caplog.text
        train_with(tmp_path / "held", [*base, "trainer.epochs=2", "dataset.resident=true"])
        assert "read from its memory map in the training process" in caplog.text
    assert_same_training_state(tmp_path / "loader" / "checkpoints" / "last.pt",
                               tmp_path / "held" / "checkpoints" / "last.pt")
    pd.testing.assert_frame_equal(metrics_without_timing(tmp_path / "loader"), metrics_without_timing(tmp_path / "held"))


def test_resume_may_switch_residency(tmp_path: Path, monkeypatch):
    """dataset.resident is how the data are held, not what they are: a run started on the DataLoader
    resumes on resident data (RESUME_FREE) and ends as a straight resident run."""
    base = run_options(tmp_path, monkeypatch)
    train_with(tmp_path / "straight", [*base, "trainer.epochs=2"])
    train_with(tmp_path / "switched", [*base, "trainer.epochs=1", "dataset.resident=false"])
    train_with(tmp_path / "switched", [*base, "trainer.epochs=2", "trainer.resume=auto", "dataset.resident_max_share=0.9"])
    assert_same_training_state(tmp_path / "straight" / "checkpoints" / "last.pt",
                               tmp_path / "switched" / "checkpoints" / "last.pt")


def test_resume_is_exact_with_resident_data(tmp_path: Path, monkeypatch):
    """test_resume's exact-resume check with pipeline=device: resident data (the default), no workers."""
    test_resume.test_resume_is_exact_with_augmenting_workers(tmp_path, monkeypatch, "device")
