"""method=scn (adadf/methods/scn.py): one step matched to the authors' code, then every command.

The matching test fills adadf's SCN network with the same seeded weights (by canonical name) as
tests/fixtures/methods/make_scn.py filled the original ``Res18Feature`` with, runs the same batch
at epoch 10, and compares the loss terms, the importance weights, the groups, the relabelled labels
and every gradient with the original's (tests/fixtures/methods/scn.json; docs/methods.md).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from adadf.config.schema import BackboneConfig
from adadf.engine.checkpoint import load_checkpoint
from adadf.errors import UserError
from adadf.methods.base import Batch, HeadOutputs
from adadf.methods.scn import SCNMethod, rank_regularization
from conftest import FAST, ROOT, cli_env
from method_reference import grad_summary, load_fixture, seeded_batch, seeded_state
from test_eval_predict import evaluate_and_predict
from test_resume import assert_same_training_state, train_here

RTOL, ATOL = 1e-4, 1e-6


@pytest.fixture(scope="module")
def fixture() -> dict:
    return load_fixture("scn")


def matched_step(fixture: dict, **options) -> tuple[SCNMethod, torch.nn.Module, dict, object, torch.Tensor]:
    """The fixture's step on adadf's SCN: (method after end_epoch, network with gradients, terms,
    outputs, the batch's labels)."""
    given = fixture["inputs"]
    method = SCNMethod(given["num_classes"], beta=given["beta"], margin_1=given["margin_1"],
                       margin_2=given["margin_2"], relabel_epoch=given["relabel_epoch"], **options)
    network = method.build_network(BackboneConfig(name="resnet18"), given["num_classes"], given["image_size"])
    shapes = {name: tuple(t.shape) for name, t in network.state_dict().items()}
    network.load_state_dict(seeded_state(shapes, seed=given["weight_seed"]))
    images, labels = seeded_batch(given["batch"], given["num_classes"], given["image_size"], seed=given["batch_seed"])
    assert labels.tolist() == given["labels"]
    method.begin_training(given["store_before"], epochs=given["epoch"])
    index = torch.tensor(given["indexes"])
    network.train()
    terms, outputs = method.step(network, Batch(images, labels, index, len(labels)), epoch=given["epoch"])
    terms["loss"].backward()
    method.end_epoch()
    return method, network, terms, outputs, labels


def test_one_step_matches_the_original(fixture: dict):
    method, network, terms, outputs, _ = matched_step(fixture)
    close = dict(rtol=RTOL, atol=ATOL)
    assert set(dict(network.named_parameters())) == set(fixture["grad_summary"])  # the canonical names
    torch.testing.assert_close(outputs.attention.detach(), torch.tensor(fixture["attention"]), **close)
    torch.testing.assert_close(outputs.logits.detach(), torch.tensor(fixture["logits"]), **close)
    given = fixture["inputs"]
    _, high, low = rank_regularization(outputs.attention.detach(), given["beta"], given["margin_1"])
    assert sorted(high.tolist()) == fixture["high"] and sorted(low.tolist()) == fixture["low"]
    assert fixture["rr"] > 0  # the rank regularisation is active, so its gradient is checked too
    for key in ("ce", "rr"):
        assert float(terms[key].detach()) == pytest.approx(fixture[key], rel=RTOL, abs=ATOL), key
    assert float(terms["loss"].detach()) == pytest.approx(fixture["total"], rel=RTOL, abs=ATOL)
    mask = fixture["relabel_mask"]
    assert 0 < sum(mask) < len(mask)  # some relabelled, some not
    assert float(terms["relabelled"]) == pytest.approx(sum(mask) / len(mask))
    assert method.labels.tolist() == fixture["store_after"]
    grads = grad_summary({name: p.grad for name, p in network.named_parameters()})
    assert set(grads) == set(fixture["grad_summary"])  # every parameter got a gradient, as in the original
    for name, expected in fixture["grad_summary"].items():
        torch.testing.assert_close(torch.tensor(grads[name], dtype=torch.float64),
                                   torch.tensor(expected, dtype=torch.float64), rtol=RTOL, atol=ATOL, msg=name)


def test_relabel_low_only_keeps_the_high_group(fixture: dict):
    """The original relabels high-importance samples too (rows outside the low group in the mask);
    relabel_low_only does not."""
    low, mask = set(fixture["low"]), fixture["relabel_mask"]
    assert any(m and i not in low for i, m in enumerate(mask)) and any(m and i in low for i, m in enumerate(mask))
    method, *_ = matched_step(fixture, relabel_low_only=True)
    assert method.labels.tolist() == fixture["store_after_low_only"] != fixture["store_after"]


def test_no_relabelling_before_the_relabel_epoch(fixture: dict):
    given = fixture["inputs"]
    method = SCNMethod(given["num_classes"], relabel_epoch=3)
    method.begin_training(given["store_before"], epochs=3)

    def forward(images: torch.Tensor) -> HeadOutputs:  # the original's outputs on the fixture's batch
        return HeadOutputs(logits=torch.tensor(fixture["logits"]), attention=torch.tensor(fixture["attention"]))

    batch = Batch(torch.zeros(10, 3, 8, 8), torch.tensor(given["labels"]), torch.tensor(given["indexes"]), 10)
    terms, _ = method.step(forward, batch, epoch=2)
    method.end_epoch()
    assert float(terms["relabelled"]) == 0 and method.labels.tolist() == given["store_before"]
    terms, _ = method.step(forward, batch, epoch=3)
    method.end_epoch()
    assert float(terms["relabelled"]) > 0 and method.labels.tolist() != given["store_before"]


def test_a_relabel_epoch_beyond_the_run_is_one_line(caplog):
    with pytest.raises(UserError, match=r"method.relabel_epoch=10 is beyond the run's trainer.epochs=2"):
        SCNMethod(7, relabel_epoch=10).begin_training([0, 1, 2], epochs=2)
    # Left at null (the original's 10), a shorter run (debug=fast, a short sweep) trains without relabelling.
    method = SCNMethod(7)
    method.begin_training([0, 1, 2], epochs=2)
    assert method.relabel_epoch == 10
    assert "relabelling starts at epoch 10 (the original's), after this 2-epoch run" in caplog.text


# ------------------------------------------------------------------------------------ end to end
# Relabelling from the first epoch, at margin 0 (any sample whose prediction is not its label), so
# the tiny runs change the store and resume must carry it.
SCN = ["method=scn", "dataset.label_noise=0.25", "method.relabel_epoch=1", "method.margin_2=0.0"]


@pytest.fixture(scope="module")
def scn_run(tmp_path_factory, cache_dir) -> Path:
    out = tmp_path_factory.mktemp("scn")
    summary = train_here(out, cache_dir, *SCN, "trainer.epochs=2")
    assert summary["status"] == "completed" and summary["epochs_completed"] == 2
    return out


def test_scn_trains_its_network_and_relabels(scn_run: Path):
    metrics = pd.read_csv(scn_run / "metrics.csv")
    assert metrics["train_loss"].tolist() == pytest.approx((metrics["train_ce"] + metrics["train_rr"]).tolist())
    assert (metrics["train_relabelled"] > 0).all()
    state = load_checkpoint(scn_run / "checkpoints" / "last.pt")
    assert state["config"]["method"]["_target_"] == "adadf.methods.scn.SCNMethod"
    assert "body.conv1.weight" in state["model"] and "head.attention.weight" in state["model"]
    (group,) = state["optimizer"]["param_groups"]  # every layer trained, conv1 included
    assert len(group["params"]) == len([k for k in state["model"] if "running" not in k and "num_batches" not in k])
    # The store is indexed by dataset index and took relabels: it differs from the labels trained on.
    scores = pd.read_csv(scn_run / "train_attention.csv").sort_values("index")
    store = state["method"]["labels"]
    assert store.dtype == torch.int64 and store.shape == (len(scores),)
    assert (store != torch.tensor(scores["label"].to_numpy())).any()
    # SCN's importance (alpha) is a noise score of its own, low = suspect.
    assert scores["importance"].between(0, 1).all() and "noise_auroc_importance" in metrics.columns


def test_scn_resume_is_exact(scn_run: Path, tmp_path: Path, cache_dir: Path):
    run = tmp_path / "resumed"
    first = train_here(run, cache_dir, *SCN, "trainer.epochs=1")
    store = load_checkpoint(run / "checkpoints" / "last.pt")["method"]["labels"]
    resumed = train_here(run, cache_dir, *SCN, "trainer.epochs=2", "trainer.resume=auto")
    assert first["epochs_completed"] == 1 and resumed["epochs_completed"] == 2
    assert_same_training_state(scn_run / "checkpoints" / "last.pt", run / "checkpoints" / "last.pt")
    assert not torch.equal(store, load_checkpoint(run / "checkpoints" / "last.pt")["method"]["labels"])


def test_scn_checkpoint_evaluates_and_predicts_with_its_scaled_logits(scn_run: Path, tmp_path: Path):
    probs, model, x = evaluate_and_predict(scn_run, tmp_path)
    with torch.no_grad():
        features = F.adaptive_avg_pool2d(model.body(x), 1).flatten(1)
        plain = model.head.fc(features)
        scaled = torch.sigmoid(model.head.attention(features)) * plain
    torch.testing.assert_close(probs, F.softmax(scaled, 1), rtol=0, atol=1e-6)
    assert not torch.allclose(probs, F.softmax(plain, 1), atol=1e-4)


def test_a_relabel_epoch_beyond_the_run_is_one_line_before_any_work(run_cli, tmp_path: Path):
    out = tmp_path / "run"
    proc = run_cli([*FAST, "method=scn", "method.relabel_epoch=10", "trainer.epochs=2", f"hydra.run.dir={out}"],
                   cwd=tmp_path)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "method.relabel_epoch=10 is beyond the run's trainer.epochs=2: SCN would never relabel "
        "(set method.relabel_epoch <= 2)"]
    assert not (out / "metrics.csv").exists() and not (out / "checkpoints").exists()


def test_scn_under_torchrun(tmp_path: Path, cache_dir: Path):
    """Two CPU processes: each relabels its shard; the store is the same on both ranks (the trainer
    checks it every epoch) and holds both shards' relabels."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "run.py"), *FAST, *SCN, f"hydra.run.dir={out}"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=cli_env(cache_dir), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert json.loads((out / "summary.json").read_text())["status"] == "completed"
    scores = pd.read_csv(out / "train_attention.csv").sort_values("index")
    store = load_checkpoint(out / "checkpoints" / "last.pt")["method"]["labels"]
    changed = (store != torch.tensor(scores["label"].to_numpy())).numpy()
    # Each rank took 4 batches of 16 from its half of the indices; at margin 0 every relabel changes a
    # label, so the store holds as many changes as both ranks relabelled (the metric sums the ranks).
    seen = scores["aux_loss"].notna().to_numpy()
    assert seen.sum() == 128 and not changed[~seen].any()
    relabelled = float(pd.read_csv(out / "metrics.csv")["train_relabelled"].iloc[0])
    assert changed.sum() == round(relabelled * 128) > 64
