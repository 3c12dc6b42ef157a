"""``method=eac`` (adadf/methods/eac.py): one training step against the original code's numbers
(tests/fixtures/methods/eac.json, made by make_eac.py; docs/methods.md), the parts the step is made
of, and the method through the commands (train, resume, evaluate, predict)."""
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
from adadf.methods.base import Batch
from adadf.methods.eac import EACMethod, flip_consistency
from conftest import ROOT, cli_env
from method_reference import grad_summary, load_fixture, seeded_batch, seeded_state
from test_eval_predict import evaluate_and_predict
from test_resume import TINY, completed_cli_run, assert_same_training_state, metrics_without_timing, train_here

C = 7


def seeded_network(method: EACMethod, image_size: int = 224):
    """adadf's EAC network, every parameter and buffer from ``seeded_state`` by its own name
    (``body.<resnet18 name>``, ``head.fc.*``: the canonical names make_eac.py filled the original with)."""
    network = method.build_network(BackboneConfig(name="resnet18"), C, image_size)
    network.load_state_dict(seeded_state({k: tuple(v.shape) for k, v in network.state_dict().items()}))
    return network


# -- against the original code ----------------------------------------------------------------
@pytest.fixture(scope="module")
def reference() -> dict:
    return load_fixture("eac")


@pytest.fixture(scope="module")
def one_step(reference):
    """adadf's step on the fixture's weights and batch, in train mode, loss backpropagated."""
    method = EACMethod(C, lam=reference["inputs"]["lam"])
    network = seeded_network(method).train()
    images, labels = seeded_batch(4)
    assert labels.tolist() == reference["inputs"]["labels"]
    terms, outputs = method.step(network, Batch(images, labels, None, num_images=4), epoch=1)
    terms["loss"].backward()
    return network, {k: v.detach() for k, v in terms.items()}, outputs


def test_one_step_matches_the_original_code(reference, one_step):
    """CE, L_flip, total and view 1's logits as the original Model/ACLoss computed them on the same
    ResNet-18 weights and batch; the two passes moved the BatchNorm statistics twice, as there."""
    network, terms, outputs = one_step
    assert reference["commit"] == "61efdfd373b6d2fe7c6d31712427aa263f72900d"
    assert float(terms["ce"]) == pytest.approx(reference["ce"], rel=1e-5, abs=1e-6)
    assert float(terms["consistency"]) == pytest.approx(reference["l_flip"], rel=1e-5, abs=1e-6)
    assert float(terms["loss"]) == pytest.approx(reference["total"], rel=1e-5, abs=1e-6)
    torch.testing.assert_close(outputs.logits.detach(), torch.tensor(reference["logits1"]), rtol=1e-4, atol=1e-6)
    cams = outputs.extra["cams"].detach().double()  # view 1's maps [4, 7, 7, 7] (a bias in them would cancel in L_flip)
    assert [float(cams.sum()), float(cams.norm())] == pytest.approx(reference["cam1_sum_norm"], rel=1e-5)
    buffers = {k: v for k, v in network.state_dict().items() if k.endswith(("running_mean", "running_var"))}
    assert set(buffers) == set(reference["bn_buffers_after"])
    for name, (total, norm) in reference["bn_buffers_after"].items():
        assert float(buffers[name].double().sum()) == pytest.approx(total, rel=1e-4, abs=1e-6), name
        assert float(buffers[name].double().norm()) == pytest.approx(norm, rel=1e-5), name
    assert int(network.body.bn1.num_batches_tracked) == reference["num_batches_tracked_after"] == 2


def test_every_gradient_matches_the_original_code(reference, one_step):
    """[sum, L2 norm, first element] of every parameter's gradient, by canonical name.

    The norm within 1e-5 relative; the sum and the first element within 1e-4 relative plus 2e-4 of
    the gradient's norm: a sum of thousands of entries cancels (the classifier's weight gradient
    sums to 0 exactly over classes), and the float32 difference between two correct orders of the
    same operations is about 6e-5 of the norm for the early convolutions here. A wrong step (maps
    with the bias or an undetached weight, one concatenated pass, a vertical flip) moves them by
    O(1)."""
    network, _, _ = one_step
    got = grad_summary({name: p.grad for name, p in network.named_parameters()})
    assert set(got) == set(reference["grad_summary"]) and len(got) == 62
    for name, (total, norm, first) in reference["grad_summary"].items():
        s, n, f = got[name]
        assert n == pytest.approx(norm, rel=1e-5), name
        assert abs(s - total) <= 1e-4 * abs(total) + 2e-4 * norm + 1e-6, (name, s, total)
        assert abs(f - first) <= 1e-4 * abs(first) + 2e-4 * norm + 1e-6, (name, f, first)


# -- the parts -----------------------------------------------------------------------------------
def test_index_flip_equals_the_bilinear_grid_flip():
    """The original mirrors M2 with grid_sample on a negated [-1, 1] grid (align_corners, border);
    adadf with torch.flip: the same up to float rounding, per image and in the mean."""
    g = torch.Generator().manual_seed(0)
    m1, m2 = torch.randn(3, C, 7, 7, generator=g), torch.randn(3, C, 7, 7, generator=g)
    xs = -torch.linspace(-1, 1, 7).view(1, 7).expand(7, 7)
    ys = torch.linspace(-1, 1, 7).view(7, 1).expand(7, 7)
    grid = torch.stack([xs, ys], dim=-1).expand(3, 7, 7, 2)
    mirrored = F.grid_sample(m2, grid, mode="bilinear", padding_mode="border", align_corners=True)
    expected = (m1 - mirrored).pow(2).mean((1, 2, 3))
    torch.testing.assert_close(flip_consistency(m1, m2), expected, rtol=1e-5, atol=1e-6)
    assert float(flip_consistency(m1, m2).mean()) == pytest.approx(float(F.mse_loss(m1, mirrored)), rel=1e-5)
    assert not torch.allclose(flip_consistency(m1, m2), (m1 - m2.flip(2)).pow(2).mean((1, 2, 3)))


def test_maps_come_from_the_detached_classifier_without_bias(one_step):
    """mean_hw M_k = logit_k - b_k, and the consistency term alone gives the classifier no gradient."""
    network, _, outputs = one_step
    cams = outputs.extra["cams"]
    assert cams.shape == (4, C, 7, 7)
    torch.testing.assert_close(cams.mean((2, 3)), outputs.logits - network.head.fc.bias, rtol=1e-5, atol=1e-5)

    method = EACMethod(C)
    fresh = seeded_network(method).train()
    images, labels = seeded_batch(4)
    _, out = method.step(fresh, Batch(images, labels, None, 4), epoch=1)
    flip_consistency(out.extra["cams"], fresh(images.flip(3)).extra["cams"]).mean().backward()
    assert fresh.head.fc.weight.grad is None and fresh.body.conv1.weight.grad is not None


def test_per_image_scores_and_ten_crop_batches():
    """Every row is an image with its own view 2 (ten-crop batches work crop by crop); the scores
    are [N] per row: the step's consistency (its mean is the logged term) and the small loss."""
    method = EACMethod(C)
    network = seeded_network(method, image_size=64).train()
    images = torch.randn(2 * 10, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(2).repeat_interleave(10)
    terms, outputs = method.step(network, Batch(images, labels, torch.tensor([5, 9]), num_images=2, num_crops=10),
                                 epoch=1)
    terms = {k: v.detach() for k, v in terms.items()}
    scores = method.sample_scores(outputs, labels)
    assert set(scores) == {"aux_loss", "consistency"} and "consistency" not in method.low_is_suspect
    assert scores["consistency"].shape == scores["aux_loss"].shape == (20,)
    assert float(scores["consistency"].mean()) == pytest.approx(float(terms["consistency"]), rel=1e-6)
    assert float(terms["loss"]) == pytest.approx(float(terms["ce"]) + 5 * float(terms["consistency"]), rel=1e-6)
    assert (scores["consistency"] > 0).all()


# -- through the commands ------------------------------------------------------------------------
EAC = ["method=eac", "dataset.label_noise=0.25"]


@pytest.fixture(scope="module")
def eac_run(tmp_path_factory, cache_dir) -> Path:
    """Two epochs through the real command line (``python run.py``)."""
    out = completed_cli_run(tmp_path_factory, cache_dir, "eac", *EAC, "trainer.epochs=2")
    assert json.loads((out / "summary.json").read_text())["epochs_completed"] == 2
    return out


@pytest.mark.slow
def test_eac_trains_every_layer_with_two_terms(eac_run: Path):
    metrics = pd.read_csv(eac_run / "metrics.csv")
    assert {"train_loss", "train_ce", "train_consistency"} <= set(metrics.columns)
    assert (metrics["train_consistency"] > 0).all()
    assert metrics["train_loss"].to_numpy() == pytest.approx(
        (metrics["train_ce"] + 5 * metrics["train_consistency"]).to_numpy(), rel=1e-6)  # float32 steps
    state = load_checkpoint(eac_run / "checkpoints" / "last.pt")
    assert state["config"]["method"]["_target_"] == "adadf.methods.eac.EACMethod"
    assert state["config"]["method"]["lam"] == 5.0
    keys = set(state["model"])
    assert {"body.conv1.weight", "head.fc.weight", "head.fc.bias"} <= keys
    assert not any(k.startswith(("trunk.", "target_branch.", "aux_branch.")) for k in keys)
    # One group, every parameter trained (the body's conv1 included); two passes a step: the
    # BatchNorm counters moved twice per batch (3 batches of 8 per epoch).
    trained = [k for k in keys if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert len(state["optimizer"]["state"]) == len(trained) == 62
    assert int(state["model"]["body.bn1.num_batches_tracked"]) == 2 * 2 * 3
    # The noise detector: each image's consistency (high = suspect) next to the small loss.
    scores = pd.read_csv(eac_run / "train_attention.csv")
    assert {"aux_loss", "consistency"} <= set(scores.columns) and "attention" not in scores.columns
    delivered = scores["consistency"].notna()
    assert delivered.sum() >= 16 and (scores.loc[delivered, "consistency"] > 0).all()
    assert {"noise_auroc_consistency", "noise_auroc_aux_loss"} <= set(metrics.columns)
    assert metrics["noise_auroc_consistency"].between(0, 100).all()


@pytest.mark.slow
def test_eac_resume_is_exact(eac_run: Path, tmp_path: Path, cache_dir: Path):
    run = tmp_path / "resumed"
    train_here(run, cache_dir, *EAC, "trainer.epochs=1")
    resumed = train_here(run, cache_dir, *EAC, "trainer.epochs=2", "trainer.resume=auto")
    assert resumed["epochs_completed"] == 2
    assert_same_training_state(eac_run / "checkpoints" / "last.pt", run / "checkpoints" / "last.pt")
    pd.testing.assert_frame_equal(metrics_without_timing(eac_run), metrics_without_timing(run))


@pytest.mark.slow
def test_eac_checkpoint_evaluates_and_predicts_with_view_one_logits(eac_run: Path, tmp_path: Path):
    probs, model, x = evaluate_and_predict(eac_run, tmp_path, C)
    with torch.no_grad():
        expected = torch.softmax(model.head.fc(model.body(x).mean((2, 3))), 1)
    torch.testing.assert_close(probs, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_eac_under_torchrun(tmp_path: Path, cache_dir: Path):
    """Two CPU processes (DDP): two wrapped forward passes, then one backward per step; every
    parameter's gradient (the classifier's from CE only) is reduced once, so the steps go on."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(ROOT / "run.py"),
           *TINY, f"dataset.root={cache_dir}", *EAC, "trainer.epochs=2", f"hydra.run.dir={out}"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=cli_env(cache_dir), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs_completed"] == 2
    assert (pd.read_csv(out / "metrics.csv")["train_consistency"] > 0).all()
