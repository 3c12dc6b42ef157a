"""method=rul (adadf/methods/rul.py): matched to the original RUL code's numbers
(tests/fixtures/methods/rul.json, made by make_rul.py; docs/methods.md), then trained, resumed,
evaluated and predicted through the real commands."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from adadf.config.schema import BackboneConfig
from adadf.engine.checkpoint import load_checkpoint
from adadf.methods.base import Batch
from adadf.methods.rul import RULMethod, add_up_loss, relative_mix
from conftest import ROOT, cli_env
from method_reference import grad_summary, load_fixture, seeded_batch, seeded_state
from test_eval_predict import evaluate_and_predict
from test_resume import TINY, completed_cli_run, assert_same_training_state, train_here

RTOL, ATOL = 1e-4, 1e-6


@pytest.fixture(scope="module")
def fixture() -> dict:
    return load_fixture("rul")


def seeded_network(fixture: dict):
    """adadf's RUL network at 224 px, every tensor from seeded_state by its canonical name, no dropout."""
    network = RULMethod(7).build_network(BackboneConfig(), 7, fixture["inputs"]["image_size"])
    shapes = {name: tuple(t.shape) for name, t in network.state_dict().items()}
    network.load_state_dict(seeded_state(shapes, seed=fixture["inputs"]["weight_seed"]), strict=True)
    for module in network.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return network.train()


def close(actual, expected) -> None:
    torch.testing.assert_close(torch.as_tensor(actual, dtype=torch.float64),
                               torch.as_tensor(expected, dtype=torch.float64), rtol=RTOL, atol=ATOL)


def test_one_step_matches_the_original(fixture: dict):
    inputs = fixture["inputs"]
    network = seeded_network(fixture)
    assert network.head.mu.linear.in_features == 512 * 7 * 7  # 25,088 at 224 px, as the original
    images, labels = seeded_batch(inputs["B"], seed=inputs["batch_seed"], size=inputs["image_size"])
    assert labels.tolist() == fixture["labels"]
    perm = torch.tensor(inputs["perm"])

    # The method's own step, with its permutation replaced by the fixture's.
    method = RULMethod(7)
    method.pairing = lambda rows: perm.clone()
    terms, outputs = method.step(network, Batch(images, labels, None, inputs["B"]), epoch=1)
    terms["loss"].backward()

    close(outputs.extra["uncertainty"], fixture["u"])
    close(outputs.extra["lam"], fixture["lam"])
    close(outputs.extra["mixed_logits"], fixture["logits"])
    close(terms["loss"], fixture["loss"])
    got = grad_summary({name: p.grad for name, p in network.named_parameters()})
    assert set(got) == set(fixture["grad_summary"])  # every parameter has a gradient, by the same name
    for name, expected in fixture["grad_summary"].items():
        close(got[name], expected)


def test_mix_and_loss_follow_the_formulas():
    g = torch.Generator().manual_seed(0)
    mu, log_var = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    labels = torch.tensor([0, 1, 2, 1, 0])
    perm = torch.tensor([1, 0, 2, 4, 3])  # 2 is a fixed point: lam 0.5, m = mu
    u, lam, mixed = relative_mix(mu, log_var, perm)
    for i, j in enumerate(perm.tolist()):
        ui, uj = log_var[i].exp().mean(), log_var[j].exp().mean()
        assert torch.allclose(u[i, 0], ui) and torch.allclose(lam[i, 0], ui / (ui + uj))
        assert torch.allclose(mixed[i], (ui * mu[i] + uj * mu[j]) / (ui + uj), atol=1e-6)
    assert lam[2, 0] == 0.5 and torch.equal(mixed[2], mu[2])
    logits = torch.randn(5, 3, generator=g)
    ce = torch.nn.functional.cross_entropy
    assert torch.allclose(add_up_loss(logits, labels, perm), 0.5 * ce(logits, labels) + 0.5 * ce(logits, labels[perm]))


def test_classifier_learns_at_ten_times_the_lr_and_pairings_resume():
    method = RULMethod(7, seed=3)
    network = method.build_network(BackboneConfig(), 7, 64)
    assert network.head.mu.linear.in_features == 512 * 2 * 2  # the run's image size, not 224's
    groups = method.param_groups(list(network.named_parameters()))
    fc = {id(p) for p in network.head.fc.parameters()}
    assert [g["lr_scale"] for g in groups] == [1.0, 10.0]
    assert {id(p) for p in groups[1]["params"]} == fc
    assert len(groups[0]["params"]) + len(fc) == len(list(network.parameters()))

    state = method.state_dict()
    first = method.pairing(16)
    again = RULMethod(7, seed=99)
    again.load_state_dict(state)
    assert torch.equal(again.pairing(16), first)
    assert not torch.equal(method.pairing(16), first)  # a fresh permutation every step


# -- through the commands --------------------------------------------------------------------
RUL = ["method=rul", "dataset.label_noise=0.25"]


@pytest.fixture(scope="module")
def rul_run(tmp_path_factory, cache_dir) -> Path:
    """Two epochs through the real command line (``python run.py``)."""
    out = completed_cli_run(tmp_path_factory, cache_dir, "rul", *RUL, "trainer.epochs=2")
    assert json.loads((out / "summary.json").read_text())["epochs_completed"] == 2
    return out


@pytest.mark.slow
def test_rul_trains_every_layer_with_its_pairing_state(rul_run: Path):
    metrics = pd.read_csv(rul_run / "metrics.csv")
    assert {"train_loss", "train_uncertainty"} <= set(metrics.columns)
    assert (metrics["train_uncertainty"] > 0).all()
    # The noise detector reads RUL's own score, u = mean exp(s) > 0, next to the small-loss one.
    assert {"noise_auroc_aux_loss", "noise_auroc_uncertainty"} <= set(metrics.columns)
    scores = pd.read_csv(rul_run / "train_attention.csv")
    assert (scores["uncertainty"] > 0).all() and scores["aux_loss"].notna().all()
    state = load_checkpoint(rul_run / "checkpoints" / "last.pt")
    assert state["config"]["method"]["_target_"] == "adadf.methods.rul.RULMethod"
    assert set(state["method"]) == {"generator"}
    model_keys = set(state["model"])
    assert {"head.mu.linear.weight", "head.log_var.linear.weight", "head.fc.weight", "body.conv1.weight"} <= model_keys
    # Two groups: everything else at lr, the classifier at 10x; every parameter has optimizer state.
    body_and_heads, fc = state["optimizer"]["param_groups"]
    assert fc["lr"] == pytest.approx(10 * body_and_heads["lr"])
    assert len(fc["params"]) == 2
    trained = len(body_and_heads["params"]) + len(fc["params"])
    assert trained == len(state["optimizer"]["state"]) == sum(1 for k in model_keys if not k.endswith(
        ("running_mean", "running_var", "num_batches_tracked")))


@pytest.mark.slow
def test_rul_resume_is_exact(rul_run: Path, tmp_path: Path, cache_dir: Path):
    run = tmp_path / "resumed"
    train_here(run, cache_dir, *RUL, "trainer.epochs=1")
    resumed = train_here(run, cache_dir, *RUL, "trainer.epochs=2", "trainer.resume=auto")
    assert resumed["epochs_completed"] == 2
    assert_same_training_state(rul_run / "checkpoints" / "last.pt", run / "checkpoints" / "last.pt")


@pytest.mark.slow
def test_rul_checkpoint_evaluates_and_predicts_with_fc_of_mu(rul_run: Path, tmp_path: Path):
    probs, model, x = evaluate_and_predict(rul_run, tmp_path)
    with torch.no_grad():
        expected = torch.softmax(model.head.fc(model.head.mu(model.body(x))), 1)
    torch.testing.assert_close(probs, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_rul_under_torchrun(tmp_path: Path, cache_dir: Path):
    """Two CPU processes (DDP): every parameter gets its gradient inside the wrapped forward (the
    pairing is a forward argument), so the run completes."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(ROOT / "run.py"),
           *TINY, f"dataset.root={cache_dir}", *RUL, "trainer.epochs=1", f"hydra.run.dir={out}"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=cli_env(cache_dir), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert json.loads((out / "summary.json").read_text())["status"] == "completed"
