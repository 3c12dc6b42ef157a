"""Multi-process training (DDP) on the CPU with gloo: torchrun end to end, and the pieces in-process."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from adadf.config.schema import FusionConfig
from adadf.data.bundle import make_loader
from adadf.data.samplers import ClassBalancedSampler
from adadf.engine import distributed
from adadf.engine.interrupt import StopFlag, StopRequested
from adadf.engine.loop import StepContext, evaluate
from adadf.methods.adadf import AdaDFMethod
from conftest import FAST, ROOT, cli_env

WORLD = 2
C = 7


# ------------------------------------------------------------------------------ torchrun end to end
def test_torchrun_two_processes(tmp_path: Path, cache_dir: Path):
    """`torchrun --nproc_per_node 2 run.py ...`: one run dir, one W&B run, rank-0 files only.

    The trainer checks after every epoch that the class distributions are identical on all ranks
    (``check_same_across_ranks``): a run that passes had the same LD everywhere.
    """
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}",
           str(ROOT / "run.py"), *FAST, "logger=wandb", "trainer.epochs=2", f"hydra.run.dir={out}"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=cli_env(cache_dir), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]

    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"], "a rank wrote outside the run dir"
    metrics = pd.read_csv(out / "metrics.csv")
    assert metrics["epoch"].tolist() == [1, 2]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs_completed"] == 2
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    assert (out / "checkpoints" / "last.pt").is_file()
    assert (out / ".hydra" / "config.yaml").is_file()
    log = (out / "run.log").read_text()
    assert "rank 0/2 joined the gloo process group" in log
    assert "rank 1/2" not in log  # only rank 0 writes the log
    # 140 training images over 2 ranks of batch 16: 70 per rank -> 4 batches each.
    assert "4 train batches/epoch" in log
    state = torch.load(out / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
    assert not any(k.startswith("module.") for k in state["model"]), "checkpoint not unwrapped from DDP"


# ------------------------------------------------------------------------------ in-process, 2 ranks
def _tiny_model() -> nn.Module:
    class Tiny(nn.Module):  # AdaDF's output contract: (aux logits, target logits, attention)
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, C)

        def forward(self, x, target_only=False):  # AdaDF's interface: evaluation asks for z_2 only
            z = self.fc(x.flatten(1))
            return -z if target_only else (z, -z, torch.sigmoid(z[:, 0]))

    torch.manual_seed(0)
    return Tiny()


def _worker(rank: int, store: str, results: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    try:
        out: dict = {}
        world = distributed.current_world()
        out["world"] = (world.rank, world.size)

        # Class distributions: each rank sees different samples; sums are reduced.
        gen = torch.Generator().manual_seed(100 + rank)
        logits = torch.randn(50, C, generator=gen) * 3
        labels = torch.randint(0, C, (50,), generator=gen)
        method = AdaDFMethod(FusionConfig(), C)
        method.observe((logits, logits, None), labels)
        method.end_epoch(distributed.all_reduce_sum)
        out["ld"] = method.class_dist
        out["logits"], out["labels"] = logits, labels
        distributed.check_same_across_ranks(out["ld"], "LD")

        # Loaders: train = DistributedSampler (shuffled, tail dropped); eval = shards, no padding.
        data = TensorDataset(torch.arange(23).float().view(23, 1).expand(23, 4).contiguous(), torch.arange(23) % C)
        train = make_loader(data, batch_size=4, num_workers=0, train=True, seed=0)
        train.sampler.set_epoch(0)
        out["train_e0"] = list(train.sampler)
        train.sampler.set_epoch(1)
        out["train_e1"] = list(train.sampler)
        test = make_loader(data, batch_size=4, num_workers=0, train=False, seed=0)
        out["test"] = list(test.sampler)

        # Class-balanced sampler, sharded: every rank draws the same epoch, keeps its part.
        labels23 = (torch.arange(23) % 3).tolist()
        balanced = make_loader(data, batch_size=2, num_workers=0, train=True, seed=0,
                               sampler=ClassBalancedSampler(labels23, 3, seed=5))
        balanced.sampler.set_epoch(3)
        out["balanced"] = list(balanced.sampler)
        out["balanced_len"] = len(balanced.sampler)

        # Evaluation on shards, confusion summed: equals one process over the whole set.
        model = _tiny_model()
        result = evaluate(model, test, C, StepContext(device=torch.device("cpu"), progress=False),
                          reduce=distributed.all_reduce_sum)
        out["confusion"] = result.confusion

        # Buffers: rank 0's copy wins.
        bn = nn.BatchNorm1d(3)
        bn.running_mean.fill_(float(rank + 1))
        distributed.broadcast_buffers(bn)
        out["running_mean"] = bn.running_mean.clone()

        # A signal seen by one rank stops every rank at the same check.
        flag = StopFlag()
        agreed = distributed.AgreedStopFlag(flag)
        agreed.check()  # nobody stopped: passes on both ranks
        if rank == 1:
            flag.signame = "SIGTERM"
        try:
            agreed.check()
            out["stopped"] = None
        except StopRequested as stop:
            out["stopped"] = stop.signame
        torch.save(out, f"{results}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    tmp = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(str(tmp / "store"), str(tmp)), nprocs=WORLD, join=True)
    return [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def test_world(ranks):
    assert [r["world"] for r in ranks] == [(0, 2), (1, 2)]


def test_class_distributions_identical_and_equal_to_one_process(ranks):
    assert torch.equal(ranks[0]["ld"], ranks[1]["ld"])
    single = AdaDFMethod(FusionConfig(), C)
    logits = torch.cat([r["logits"] for r in ranks])
    single.observe((logits, logits, None), torch.cat([r["labels"] for r in ranks]))
    single.end_epoch()
    torch.testing.assert_close(ranks[0]["ld"], single.class_dist, rtol=0, atol=1e-6)
    # Not the trivial LD: the statistics changed something.
    assert not torch.equal(ranks[0]["ld"], AdaDFMethod(FusionConfig(), C).class_dist)


def test_train_sampler_partitions_each_epoch(ranks):
    for key in ("train_e0", "train_e1"):
        a, b = ranks[0][key], ranks[1][key]
        assert len(a) == len(b) == 11  # 23 samples, tail dropped
        assert not set(a) & set(b)
    assert ranks[0]["train_e0"] != ranks[0]["train_e1"]  # set_epoch reshuffles


def test_eval_shards_cover_every_sample_once(ranks):
    assert sorted(ranks[0]["test"] + ranks[1]["test"]) == list(range(23))


def test_balanced_sampler_sharded(ranks):
    a, b = ranks[0]["balanced"], ranks[1]["balanced"]
    assert len(a) == len(b) == ranks[0]["balanced_len"] == 10  # 7 per class * 3 = 21 -> 20 / 2
    assert not set(a) & set(b)
    inner = ClassBalancedSampler((torch.arange(23) % 3).tolist(), 3, seed=5)
    inner.set_epoch(3)
    full = list(inner)
    assert sorted(a + b) == sorted(full[:20])


def test_sharded_evaluation_equals_one_process(ranks):
    assert torch.equal(ranks[0]["confusion"], ranks[1]["confusion"])
    data = TensorDataset(torch.arange(23).float().view(23, 1).expand(23, 4).contiguous(), torch.arange(23) % C)
    full = evaluate(_tiny_model(), DataLoader(data, batch_size=5), C,
                    StepContext(device=torch.device("cpu"), progress=False))
    assert torch.equal(ranks[0]["confusion"], full.confusion)
    assert int(full.confusion.sum()) == 23


def test_stop_signal_is_agreed(ranks):
    assert [r["stopped"] for r in ranks] == ["SIGTERM", "SIGTERM"]


def test_buffers_follow_rank_zero(ranks):
    assert torch.equal(ranks[1]["running_mean"], torch.ones(3))


# ------------------------------------------------------------------------------ no process group
def test_hydra_argv_for_rank():
    argv = ["run.py", "debug=fast"]
    assert distributed.hydra_argv_for_rank(argv, {}) == argv
    assert distributed.hydra_argv_for_rank(argv, {"WORLD_SIZE": "2", "RANK": "0"}) == argv
    other = distributed.hydra_argv_for_rank(argv, {"WORLD_SIZE": "2", "RANK": "1"})
    assert other[:2] == argv and "hydra.output_subdir=null" in other and "hydra/job_logging=stdout" in other
    with pytest.raises(SystemExit):
        distributed.hydra_argv_for_rank(["run.py", "-m", "seed=0,1"], {"WORLD_SIZE": "2", "RANK": "0"})


def test_single_process_is_unchanged():
    assert distributed.current_world() == distributed.World()
    t = torch.arange(3)
    assert distributed.all_reduce_sum(t) is t
    loader = make_loader(TensorDataset(torch.zeros(5, 1)), batch_size=2, num_workers=0, train=True, seed=0)
    assert isinstance(loader.sampler, torch.utils.data.RandomSampler)
    model = nn.Linear(2, 2)
    assert distributed.wrap_model(model, torch.device("cpu")) is model
