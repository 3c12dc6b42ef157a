"""The method interface (docs/methods.md): a method builds its own network, defines its step, reads
the batch's dataset indices, groups its parameters, and evaluation rebuilds it from the checkpoint."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import FAST, ROOT, cli_env

PLUGINS = Path(__file__).parent / "plugins"


def _run(args: list[str], cwd: Path, cache_dir: Path, module: str | None = None) -> subprocess.CompletedProcess:
    env = cli_env(cache_dir)
    env["PYTHONPATH"] = os.pathsep.join([str(PLUGINS), env.get("PYTHONPATH", "")])
    command = [sys.executable, "-m", module] if module else [sys.executable, str(ROOT / "run.py")]
    return subprocess.run([*command, *args, f"hydra.searchpath=[file://{PLUGINS / 'conf'}]"],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def head_run(tmp_path_factory, cache_dir) -> Path:
    """Two epochs of tests/plugins/head_method.py's method (its own network) on the tiny synthetic set."""
    out = tmp_path_factory.mktemp("head") / "run"
    proc = _run([*FAST, "method=head", "trainer.epochs=2", f"hydra.run.dir={out}"], out.parent, cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_a_method_builds_its_network_and_groups_its_parameters(head_run: Path):
    state = torch.load(head_run / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    keys = set(state["model"])
    assert "head.fc.weight" in keys and "body.layer4.1.conv2.weight" in keys
    assert not any(k.startswith(("target_branch.", "aux_branch.", "trunk.")) for k in keys)
    # Every body layer trains (the conv1 of a whole ResNet, frozen in the Ada-DF network): two groups,
    # the classifier at 10x the optimizer's lr (decayed alike by the schedule).
    groups = state["optimizer"]["param_groups"]
    assert len(groups) == 2 and groups[1]["lr"] == pytest.approx(10 * groups[0]["lr"])
    assert len(groups[0]["params"]) == len([k for k in keys if k.startswith("body.") and "running" not in k
                                            and "num_batches" not in k])


def test_every_batch_carries_its_dataset_indices(head_run: Path):
    """The method counted each index it was given: every epoch each delivered image once (drop_last
    leaves 140 % 16 out), so 2 epochs give counts of 0-2 summing to 2 * 8 * 16 over real indices."""
    seen = torch.load(head_run / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)["method"]["seen"]
    assert seen.shape == (140,)
    assert int(seen.sum()) == 2 * (140 // 16) * 16
    assert int(seen.max()) <= 2 and int((seen > 0).sum()) >= 140 - 2 * (140 % 16)


def test_evaluation_rebuilds_the_checkpoints_method(head_run: Path, cache_dir: Path, tmp_path: Path):
    """adadf-eval asks the checkpoint's method for its network: the last epoch's test accuracy again."""
    out = tmp_path / "eval"
    proc = _run([f"checkpoint={head_run / 'checkpoints' / 'last.pt'}", f"hydra.run.dir={out}", "logger=none"],
                tmp_path, cache_dir, module="adadf.evaluate")
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = pd.read_csv(head_run / "metrics.csv")
    summary = json.loads((out / "eval_summary.json").read_text())
    assert summary["acc"] == pytest.approx(float(metrics["test_acc"].iloc[-1]), abs=1e-9)


@pytest.mark.parametrize("name", ["ce_full", "scn", "rul", "eac"])
def test_declared_scores_are_the_ones_a_step_gives(name: str):
    """``Method.score_names`` (checked against ``trainer.suspects_by`` before training) names exactly
    the per-sample scores the method's step and ``sample_scores`` deliver."""
    from adadf.config.schema import BackboneConfig
    from adadf.methods import Batch
    from adadf.methods.ce import FullNetworkCEMethod
    from adadf.methods.eac import EACMethod
    from adadf.methods.rul import RULMethod
    from adadf.methods.scn import SCNMethod

    method = {"ce_full": FullNetworkCEMethod, "scn": SCNMethod, "rul": RULMethod, "eac": EACMethod}[name](7)
    torch.manual_seed(0)
    network = method.build_network(BackboneConfig(), 7, 32).train()
    labels = torch.arange(8) % 7
    method.begin_training(labels.tolist(), epochs=20)
    batch = Batch(torch.randn(8, 3, 32, 32), labels, torch.arange(8), 8)
    _, outputs = method.step(lambda x, **kw: network(x, **kw), batch, epoch=1)
    scores = method.sample_scores(outputs, labels)
    assert tuple(sorted(scores)) == tuple(sorted(method.declared_scores()))
    assert all(s.shape == (8,) for s in scores.values())
