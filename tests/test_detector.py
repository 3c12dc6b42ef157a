"""The attention as a noise detector: per-sample scores from the method's own pass, the AUROCs,
train_attention.csv, flipped_labels.csv and the pictures."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from adadf import inference
from adadf.engine.checkpoint import load_checkpoint
from adadf.tracking.samples import SampleRecorder
from adadf.methods.adadf import AdaDFMethod
from adadf.methods.ce import CEMethod
from adadf.config.schema import FusionConfig
from test_metrics import auroc_loop
from test_plots import assert_png
from test_resume import completed_run, train_here

C = 3


def outputs_for(n: int, crops: int = 1, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n * crops, C, generator=g), torch.randn(n * crops, C, generator=g),
            torch.rand(n * crops, generator=g))


def test_recorder_places_each_image_by_the_delivery_order():
    order = [4, 0, 3, 1, 5]  # sample 2 not delivered (a dropped last partial batch)
    recorder = SampleRecorder(6, CEMethod(C), torch.device("cpu")).start(lambda: order)
    labels = torch.tensor([0, 1, 2, 0, 1])
    batches = [(outputs_for(3, seed=1), labels[:3]), (outputs_for(2, seed=2), labels[3:])]
    for outputs, y in batches:
        recorder(outputs, y, len(y))
    scores = recorder.finish()
    aux, target, attention = (torch.cat(parts) for parts in zip(*(o for o, _ in batches)))
    for k, i in enumerate(order):
        assert scores.attention[i] == pytest.approx(float(attention[k]))
        # CE trains the target branch: its loss on the given label is the small-loss score.
        assert scores.aux_loss[i] == pytest.approx(float(F.cross_entropy(target[k:k + 1], labels[k:k + 1])))
        assert scores.prediction[i] == int(target[k].argmax())
    assert np.isnan(scores.attention[2]) and scores.prediction[2] == -1


def test_recorder_averages_crops_and_sums_ranks():
    method = AdaDFMethod(FusionConfig(), C)  # Ada-DF: the auxiliary branch is trained on the labels
    aux, target, attention = outputs_for(2, crops=4, seed=3)
    labels = torch.tensor([1, 2]).repeat_interleave(4)
    ranks = [SampleRecorder(4, method, torch.device("cpu")).start(lambda r=r: [r, r + 2]) for r in (0, 1)]
    ranks[0]((aux, target, attention), labels, 2)
    ranks[1]((aux.flip(0), target.flip(0), attention.flip(0)), labels.flip(0), 2)
    total = ranks[0].values + ranks[1].values
    scores = ranks[0].finish(reduce=lambda t: total)
    per_row = F.cross_entropy(aux, labels, reduction="none")
    assert scores.attention[0] == pytest.approx(float(attention[:4].mean()))
    assert scores.aux_loss[2] == pytest.approx(float(per_row[4:].mean()))
    assert scores.attention[1] == pytest.approx(float(attention.flip(0)[:4].mean()))
    assert scores.prediction[0] == int(target[:4].mean(0).argmax())


@pytest.fixture(scope="module")
def noisy_run(tmp_path_factory, cache_dir) -> Path:
    """Ada-DF with its clean class-distribution pass, 25% of the 24 training labels flipped."""
    return completed_run(tmp_path_factory, cache_dir, "noisy", "dataset.label_noise=0.25", "fusion.ld_pass=clean",
                         "trainer.epochs=1")


def test_attention_csv_and_flipped_list(noisy_run: Path):
    scores = pd.read_csv(noisy_run / "train_attention.csv")
    assert list(scores.columns) == ["index", "path", "label", "label_name", "attention", "aux_loss", "prediction",
                                    "prediction_name", "flipped", "clean_label", "clean_label_name"]
    assert len(scores) == 24 and scores["attention"].notna().all()  # the clean pass sees every image once
    flipped = pd.read_csv(noisy_run / "flipped_labels.csv")
    assert list(flipped.columns) == ["index", "path", "clean", "clean_name", "noisy", "noisy_name"]
    assert len(flipped) == 6  # round(0.25 * 24)
    assert scores.loc[scores["flipped"], "index"].tolist() == flipped["index"].tolist()
    assert (flipped["clean"] != flipped["noisy"]).all()
    assert scores.loc[scores["flipped"], "clean_label"].tolist() == flipped["clean"].tolist()
    assert (scores["label"] == scores["clean_label"]).tolist() == (~scores["flipped"]).tolist()


def test_noise_aurocs_equal_the_plain_loop(noisy_run: Path):
    scores = pd.read_csv(noisy_run / "train_attention.csv")
    summary = json.loads((noisy_run / "summary.json").read_text())
    flipped = scores["flipped"].tolist()
    assert summary["noise_auroc"] == pytest.approx(auroc_loop((-scores["attention"]).tolist(), flipped))
    assert summary["noise_auroc_aux_loss"] == pytest.approx(auroc_loop(scores["aux_loss"].tolist(), flipped))
    metrics = pd.read_csv(noisy_run / "metrics.csv")
    assert metrics["noise_auroc"].iloc[-1] == pytest.approx(summary["noise_auroc"])


def test_scores_are_the_trained_model_on_the_clean_images(noisy_run: Path):
    """The clean pass ran after the epoch's last step: last.pt's model gives the same scores."""
    checkpoint = inference.read_checkpoint(noisy_run / "checkpoints" / "last.pt")
    model = inference.load_model(checkpoint, 7)
    from adadf.app import build_data, dataset_node

    data = build_data(dataset_node(checkpoint.dataset_config), 0)
    images = torch.cat([x for x, _ in data.clean_train_loader])
    with torch.no_grad():
        aux, target, attention = model(data.eval_batch_transform(images))
    labels = torch.tensor(data.train_labels)
    scores = pd.read_csv(noisy_run / "train_attention.csv")
    np.testing.assert_allclose(scores["attention"], attention.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(scores["aux_loss"], F.cross_entropy(aux, labels, reduction="none").numpy(),
                               rtol=1e-4, atol=1e-5)
    assert scores["prediction"].tolist() == target.argmax(1).tolist()


def test_pictures_and_suspects(noisy_run: Path):
    assert_png(noisy_run / "plots" / "attention_e001.png")
    assert_png(noisy_run / "plots" / "class_dist_e001.png")
    assert_png(noisy_run / "plots" / "suspects.png")
    suspects = pd.read_csv(noisy_run / "suspects.csv")
    assert len(suspects) == 24  # trainer.suspects=36 > 24 images: all of them, ranked
    assert suspects["aux_loss"].is_monotonic_decreasing  # trainer.suspects_by=aux_loss (the default)


def test_plots_every_writes_every_nth_epoch_and_the_last(tmp_path: Path, cache_dir: Path):
    summary = train_here(tmp_path, cache_dir, "trainer.epochs=3", "trainer.plots_every=2", "trainer.suspects=0")
    assert summary["status"] == "completed"
    names = sorted(p.name for p in (tmp_path / "plots").glob("*.png"))
    assert names == ["attention_e002.png", "attention_e003.png", "class_dist_e002.png", "class_dist_e003.png"]
    assert len(pd.read_csv(tmp_path / "train_attention.csv")) == 24
    assert pd.read_csv(tmp_path / "metrics.csv")["epoch"].tolist() == [1, 2, 3]  # every epoch's row all the same


def fixed_row(i: int, threshold: float, mass: float, sharpen_T: float | None = None) -> list[float]:
    """The fallback row of docs/method.md, written out: t on the diagonal, mass / (C - 1) elsewhere."""
    row = [threshold if j == i else mass / (C - 1) for j in range(C)]
    if sharpen_T is not None:
        row = [v ** (1 / sharpen_T) for v in row]
        row = [v / sum(row) for v in row]
    return row


@pytest.mark.parametrize("sharpen", [False, True])
def test_fallback_classes_are_the_rows_on_the_fixed_distribution(sharpen: bool):
    method = AdaDFMethod(FusionConfig(sharpen=sharpen, T=1.5), C)
    p = method.params
    T = p.T if sharpen else None
    learnt = [0.8, 0.15, 0.05]  # a mean confidence above the threshold: kept
    method.load_state_dict({"class_dist": torch.tensor(
        [learnt, fixed_row(1, p.threshold, p.fallback_mass, T), fixed_row(2, p.threshold, p.fallback_mass, T)])})
    assert method.fallback_classes().tolist() == [False, True, True]
    static = AdaDFMethod(FusionConfig(update_class_dist=False), C)
    assert static.fallback_classes() is None  # a static LD is fixed by design, not fallen back


def test_class_dist_fallbacks_per_epoch(noisy_run: Path):
    metrics = pd.read_csv(noisy_run / "metrics.csv")
    ld = load_checkpoint(noisy_run / "checkpoints" / "last.pt")["method"]["class_dist"].double()
    classes = ld.shape[0]
    fixed = torch.full_like(ld, 0.4 / (classes - 1)).fill_diagonal_(0.7)  # threshold, fallback_mass: defaults
    assert metrics["class_dist_fallbacks"].tolist() == [int(torch.isclose(ld, fixed).all(1).sum())]


def test_ce_names_classes_keeps_every_epoch_and_draws_no_attention(tmp_path: Path, cache_dir: Path):
    """method=ce under label noise, two epochs: class names next to the indices, each epoch's scores
    kept (scores/), and no histogram of its frozen attention head."""
    summary = train_here(tmp_path, cache_dir, "method=ce", "dataset.label_noise=0.25", "trainer.epochs=2")
    assert summary["status"] == "completed"
    names = list(summary["best_per_class_acc"])  # the dataset's class names, in label order
    epochs = [pd.read_csv(tmp_path / "scores" / f"train_attention_e00{e}.csv") for e in (1, 2)]
    latest = (tmp_path / "train_attention.csv").read_text()
    assert latest == (tmp_path / "scores" / "train_attention_e002.csv").read_text()
    assert not epochs[0]["aux_loss"].equals(epochs[1]["aux_loss"])  # two epochs, two sets of scores
    for frame in epochs:
        assert frame["label_name"].tolist() == [names[i] for i in frame["label"]]
        assert frame["clean_label_name"].tolist() == [names[i] for i in frame["clean_label"]]
        seen = frame["prediction"] >= 0
        assert frame.loc[seen, "prediction_name"].tolist() == [names[i] for i in frame.loc[seen, "prediction"]]
    flipped = pd.read_csv(tmp_path / "flipped_labels.csv")
    assert flipped["clean_name"].tolist() == [names[i] for i in flipped["clean"]]
    assert flipped["noisy_name"].tolist() == [names[i] for i in flipped["noisy"]]
    suspects = pd.read_csv(tmp_path / "suspects.csv")
    assert suspects["label_name"].tolist() == [names[i] for i in suspects["label"]]
    assert not list((tmp_path / "plots").glob("attention_e*.png"))  # CE does not train the attention
    assert "class_dist_fallbacks" not in pd.read_csv(tmp_path / "metrics.csv")  # CE has no class distributions
