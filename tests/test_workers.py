"""Persistent loader workers (adadf.data.workers): one pool for the run, and every pass draws exactly
what a pass with fresh workers draws."""
from __future__ import annotations

import os
import random

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from adadf.data.bundle import make_loader
from adadf.data.workers import PersistentLoader


class Draws(Dataset):
    """Each item: its index, the worker's pid and one draw from each random generator a transform may use."""

    def __len__(self) -> int:
        return 12

    def __getitem__(self, i: int):
        return torch.tensor([i, os.getpid(), random.random(), float(torch.rand(())), np.random.rand()],
                            dtype=torch.float64)


def passes(loader: DataLoader, count: int, reseed: bool, stop_after: int | None = None) -> list[torch.Tensor]:
    """``count`` passes; ``reseed``: the loader's generator seeded per pass, as the trainer does
    (``stop_after``: the first pass is left after that many batches)."""
    out = []
    for k in range(count):
        if reseed:
            loader.generator.manual_seed(1000 + k)
        batches = []
        for b, batch in enumerate(loader):
            batches.append(batch)
            if k == 0 and stop_after is not None and b + 1 == stop_after:
                break
        out.append(torch.cat(batches))
    return out


def loaders(**kwargs) -> tuple[DataLoader, DataLoader]:
    """A fresh-workers loader and a persistent one, alike in everything else."""
    common = dict(batch_size=3, num_workers=2, generator=torch.Generator().manual_seed(5), **kwargs)
    fresh = DataLoader(Draws(), persistent_workers=False, **common)
    common["generator"] = torch.Generator().manual_seed(5)
    return fresh, PersistentLoader(Draws(), **common)


def without_pids(batches: list[torch.Tensor]) -> list[torch.Tensor]:
    return [b[:, [0, 2, 3, 4]] for b in batches]


def test_every_pass_draws_what_fresh_workers_draw():
    for reseed in (True, False):  # the training loader (reseeded per epoch) and an evaluation loader
        fresh, persistent = loaders(shuffle=True)
        expected, got = passes(fresh, 3, reseed), passes(persistent, 3, reseed)
        for a, b in zip(without_pids(expected), without_pids(got)):
            assert torch.equal(a, b)
        assert not torch.equal(expected[0][:, 2:], expected[1][:, 2:])  # passes do draw differently
        assert fresh.generator.get_state().equal(persistent.generator.get_state())  # one draw per pass


def test_workers_persist_across_passes():
    fresh, persistent = loaders()
    pids = [set(b[:, 1].long().tolist()) for b in passes(persistent, 2, reseed=True)]
    assert pids[0] == pids[1] and len(pids[0]) == 2
    fresh_pids = [set(b[:, 1].long().tolist()) for b in passes(fresh, 2, reseed=True)]
    assert not fresh_pids[0] & fresh_pids[1]  # the check can fail: fresh pools are new processes


def test_a_pass_left_early_does_not_shift_the_next():
    fresh, persistent = loaders(shuffle=True)
    expected = passes(fresh, 2, reseed=True, stop_after=1)
    got = passes(persistent, 2, reseed=True, stop_after=1)
    assert torch.equal(without_pids(expected)[1], without_pids(got)[1])


def test_make_loader_keeps_workers_only_where_there_are_workers():
    data = Draws()
    assert isinstance(make_loader(data, batch_size=3, num_workers=1, train=True, seed=0), PersistentLoader)
    plain = make_loader(data, batch_size=3, num_workers=0, train=True, seed=0)
    assert not isinstance(plain, PersistentLoader) and not plain.persistent_workers
    assert make_loader(data, batch_size=3, num_workers=1, train=False, seed=0).dataset[4][0] == 4  # plain index
