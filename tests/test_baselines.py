"""method=ce, the cross-entropy baseline, through every command: train, resume, evaluate, predict,
a sweep next to Ada-DF, and torchrun (DDP)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from adadf.engine.checkpoint import load_checkpoint
from adadf.models import AdaDF
from conftest import FAST, ROOT, cli_env
from test_eval_predict import evaluate_and_predict
from test_plots import assert_png
from test_resume import assert_same_training_state, completed_run, train_here

CE = ["method=ce", "dataset.label_noise=0.25"]


@pytest.fixture(scope="module")
def ce_run(tmp_path_factory, cache_dir) -> Path:
    out = tmp_path_factory.mktemp("ce")
    summary = train_here(out, cache_dir, *CE, "trainer.epochs=2")
    assert summary["status"] == "completed" and summary["epochs_completed"] == 2
    return out


def test_ce_trains_only_the_target_branch_with_a_plain_head(ce_run: Path):
    metrics = pd.read_csv(ce_run / "metrics.csv")
    assert {"train_loss", "train_ce"} <= set(metrics.columns)
    assert not {"train_kl", "train_rr", "w_ce"} & set(metrics.columns)
    assert (metrics["train_loss"] == metrics["train_ce"]).all()
    state = load_checkpoint(ce_run / "checkpoints" / "last.pt")
    assert state["config"]["method"]["_target_"] == "adadf.methods.ce.CEMethod"
    assert state["method"] == {}
    # Only the target branch is trained: the optimizer holds its parameters and nothing else (the
    # auxiliary branch and the attention heads are frozen, so DDP does not wait for their gradients).
    model = AdaDF(7)
    (group,) = state["optimizer"]["param_groups"]
    assert len(group["params"]) == len(list(model.target_branch.parameters())) == len(state["optimizer"]["state"])


def test_ce_resume_is_exact(ce_run: Path, tmp_path: Path, cache_dir: Path):
    run = tmp_path / "resumed"
    train_here(run, cache_dir, *CE, "trainer.epochs=1")
    resumed = train_here(run, cache_dir, *CE, "trainer.epochs=2", "trainer.resume=auto")
    assert resumed["epochs_completed"] == 2
    assert_same_training_state(ce_run / "checkpoints" / "last.pt", run / "checkpoints" / "last.pt")


def test_ce_checkpoint_evaluates_and_predicts_with_its_plain_head(ce_run: Path, tmp_path: Path):
    probs, model, x = evaluate_and_predict(ce_run, tmp_path)
    assert model.scale_logits is False
    with torch.no_grad():
        features = model.target_branch.forward_features(model.forward_features(x))
        plain = model.target_branch.fc(features)
        scaled = torch.sigmoid(model.target_attention(features)) * plain
    torch.testing.assert_close(probs, F.softmax(plain, 1), rtol=0, atol=1e-6)
    assert not torch.allclose(probs, F.softmax(scaled, 1), atol=1e-4)


def test_ce_and_adadf_in_one_sweep(run_cli, tmp_path: Path):
    sweep = tmp_path / "sweep"
    proc = run_cli(["-m", *FAST, "method=ce,adadf", "dataset.label_noise=0.2", f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = pd.read_csv(sweep / "sweep_summary.csv")
    assert sorted(jobs["method"]) == ["adadf", "ce"] and (jobs["status"] == "completed").all()
    assert {"noise_auroc", "noise_auroc_aux_loss"} <= set(jobs.columns)
    assert "noise AUROC: attention" in proc.stdout
    assert_png(sweep / "sweep_accuracy.png")
    assert_png(sweep / "sweep_curves.png")


def test_ce_under_torchrun(tmp_path: Path, cache_dir: Path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "run.py"), *FAST, *CE, f"hydra.run.dir={out}"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=cli_env(cache_dir), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and "noise_auroc" in summary
    # Each rank scored its shard in its training batches: 2 ranks x 4 batches x 16 images,
    # gathered into one file on rank 0.
    scores = pd.read_csv(out / "train_attention.csv")
    assert len(scores) == 140 and scores["aux_loss"].notna().sum() == 128


def test_a_switch_ce_lacks_is_one_line_before_any_work(run_cli, tmp_path: Path):
    out = tmp_path / "run"
    proc = run_cli([*FAST, "method=ce", "fusion.ld_pass=online", f"hydra.run.dir={out}"], cwd=tmp_path)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "fusion.ld_pass=online: method=ce has no class distributions (leave it at its default)"]
    assert not (out / "metrics.csv").exists() and not (out / "checkpoints").exists()


# ---------------------------------------------------------------- CE on the comparison methods' network
def test_ce_full_trains_every_layer_of_the_single_branch_network(tmp_path_factory, cache_dir: Path, tmp_path: Path):
    """``method=ce_full``: the baseline SCN, RUL and EAC are read against (their network, CE only)."""
    run = completed_run(tmp_path_factory, cache_dir, "ce_full", "method=ce_full", "dataset.label_noise=0.25",
                        "trainer.epochs=2")
    metrics = pd.read_csv(run / "metrics.csv")
    assert (metrics["train_loss"] == metrics["train_ce"]).all()
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    keys = [k for k in state["model"] if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert "body.conv1.weight" in keys and {"head.fc.weight", "head.fc.bias"} <= set(keys)
    (group,) = state["optimizer"]["param_groups"]  # one group, every layer (conv1 and layer1 included)
    assert len(group["params"]) == len(keys) == len(state["optimizer"]["state"])
    scores = pd.read_csv(run / "train_attention.csv")
    assert "aux_loss" in scores.columns and "attention" not in scores.columns
    probs, model, x = evaluate_and_predict(run, tmp_path)
    with torch.no_grad():
        expected = F.softmax(model.head.fc(model.body(x).mean((2, 3))), 1)
    torch.testing.assert_close(probs, expected, rtol=1e-4, atol=1e-5)
