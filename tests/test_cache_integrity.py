"""The fast pipeline's decoded image cache carries a content digest (issue 12, item 1): changed
pixel bytes are found when the cache is opened and the cache is rebuilt, with a warning naming it."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

import fakedata
from adadf.data.fast import build_cache
from adadf.data.raf import read_raf


@pytest.fixture
def train(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("ADADF_CACHE_DIR", str(tmp_path / "cache"))
    root = fakedata.write_raf(tmp_path / "raf", per_class=2, size=24, test_per_class=1)
    return read_raf(root)[0]


def test_changed_pixel_bytes_are_detected_and_rebuilt(train, caplog):
    path = build_cache(train, 24, split="train")
    good = np.load(path).copy()
    with open(path, "r+b") as f:  # overwrite pixel bytes, keep the header and the size
        f.seek(-500, 2)
        f.write(bytes(500))
    assert not np.array_equal(np.load(path), good)  # a plain shape/dtype check passes this file
    with caplog.at_level(logging.WARNING):
        again = build_cache(train, 24, split="train")
    assert again == path
    assert np.array_equal(np.load(path), good)  # rebuilt from the images
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(path) in warnings[0] and "\n" not in warnings[0]


def test_intact_cache_is_reused_without_warning(train, caplog, monkeypatch):
    path = build_cache(train, 24, split="train")
    digest = path.with_name(path.name + ".sha256")
    assert digest.is_file() and len(digest.read_text().split()[0]) == 64
    import adadf.data.fast as fast

    monkeypatch.setattr(fast, "_decode", lambda *a, **k: pytest.fail("decoded again"))
    with caplog.at_level(logging.WARNING):
        assert build_cache(train, 24, split="train") == path
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_missing_digest_rebuilds(train, caplog):
    path = build_cache(train, 24, split="train")
    path.with_name(path.name + ".sha256").unlink()
    with caplog.at_level(logging.WARNING):
        build_cache(train, 24, split="train")
    assert any(str(path) in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert path.with_name(path.name + ".sha256").is_file()


def test_zeroed_synthetic_cache_is_detected_and_regenerated(tmp_path: Path, caplog):
    """Issue 16 item 7: torch.load read a synthetic cache with zeroed tensor bytes without a word."""
    import torch

    from adadf.data.synthetic import cache_path, load_or_generate

    params = dict(train_size=14, test_size=7, image_size=32, ambiguity=0.0, seed=0)
    good = load_or_generate(tmp_path, **params)
    path = cache_path(tmp_path, **params)
    assert path.with_name(path.name + ".sha256").is_file()
    with open(path, "r+b") as f:  # zero the middle: image bytes, not the zip's directory
        f.seek(path.stat().st_size // 3)
        f.write(bytes(2000))
    assert not torch.equal(torch.load(path, weights_only=True)["train_images"], good["train_images"])
    with caplog.at_level(logging.WARNING):
        again = load_or_generate(tmp_path, **params)
    assert torch.equal(again["train_images"], good["train_images"])  # regenerated, not the zeroed bytes
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(path) in warnings[0] and "changed on disk" in warnings[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        load_or_generate(tmp_path, **params)  # the regenerated cache is trusted again
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
