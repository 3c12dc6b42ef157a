"""The attention as a noise detector: per-sample scores from the method's own pass, the AUROCs,
train_attention.csv, flipped_labels.csv and the pictures."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from adadf import inference
from adadf.config.fields import check_ranges
from adadf.engine.checkpoint import load_checkpoint
from adadf.engine.trainer import Progress
from adadf.errors import UserError
from adadf.metrics import auroc
from adadf.models.outputs import HeadOutputs, named
from adadf.tracking.callbacks import TRAIN_PASS
from adadf.tracking.samples import SampleDetector, SampleRecorder, noise_aurocs
from adadf.tracking.sweep import format_table, job_table, setting_table
from adadf.methods.adadf import AdaDFMethod
from adadf.methods.ce import CEMethod
from adadf.config.schema import FusionConfig, TrainerConfig
from conftest import FAST
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


class SpreadMethod(CEMethod):
    """CE plus two scores of its own: ``spread`` (high = suspect) and ``calm`` (low = suspect)."""

    low_is_suspect = frozenset({"attention", "calm"})

    def sample_scores(self, outputs, labels):
        scores = super().sample_scores(outputs, labels)
        logits = named(outputs).logits.float()
        return scores | {"spread": logits.std(1), "calm": logits.max(1).values}


class Immediate:
    """A BackgroundWriter that runs each job at once, on the calling thread."""

    def submit(self, what, job, *args):
        job(*args)


def test_every_score_of_the_method_gets_a_column_and_an_auroc(tmp_path: Path):
    """train_attention.csv: one column per score (the base's first); noise_auroc_<score> per score,
    oriented by low_is_suspect; summary.json takes every one of them."""
    order, labels = [3, 0, 5, 1, 4, 2], [0, 1, 2, 0, 1, 2]
    clean = [0, 2, 2, 0, 0, 2]  # samples 1 and 4 flipped
    data = SimpleNamespace(train_labels=labels, clean_train_labels=clean, class_names=["a", "b", "c"],
                           train_paths=[f"img{i}.png" for i in range(6)], train_order=lambda: order)
    detector = SampleDetector(data, SpreadMethod(C), torch.device("cpu"), tmp_path, None, Immediate(), epochs=1,
                              suspects_by="calm", suspects=0)
    hook = detector.begin_pass(TRAIN_PASS)
    batches = [outputs_for(3, seed=4), outputs_for(3, seed=5)]
    y = torch.tensor([labels[i] for i in order])
    for k, outputs in enumerate(batches):
        hook(outputs, y[3 * k:3 * k + 3], 3)
    metrics = detector.end_epoch(1)

    aux, target, attention = (torch.cat(parts) for parts in zip(*batches))
    by_hand = {"attention": attention, "aux_loss": F.cross_entropy(target, y, reduction="none"),
               "spread": target.std(1), "calm": target.max(1).values}  # by delivery position
    flipped = np.array(clean) != np.array(labels)
    frame = pd.read_csv(tmp_path / "train_attention.csv")
    assert list(frame.columns) == ["index", "path", "label", "label_name", "attention", "aux_loss", "spread", "calm",
                                   "prediction", "prediction_name", "flipped", "clean_label", "clean_label_name"]
    assert frame.equals(pd.read_csv(tmp_path / "scores" / "train_attention_e001.csv"))
    expected = {}
    for name, values in by_hand.items():
        per_sample = np.empty(6)
        per_sample[order] = values.double().numpy()
        np.testing.assert_allclose(frame[name], per_sample, rtol=1e-6)
        low = name in ("attention", "calm")
        key = "noise_auroc" if name == "attention" else f"noise_auroc_{name}"
        expected[key] = auroc(-per_sample if low else per_sample, flipped)
    assert expected["noise_auroc_calm"] != pytest.approx(auroc(frame["calm"], flipped))  # the orientation matters
    assert metrics == pytest.approx(expected) and list(metrics) == list(expected)
    summary = Progress(epoch=1, history=[{"epoch": 1, "test_acc": 50.0, **metrics}]).summary("completed", 1.0)
    assert {k: v for k, v in summary.items() if k.startswith("noise_auroc")} == pytest.approx(expected)
    assert detector.scores.suspicion("calm") == pytest.approx(-frame["calm"].to_numpy())


def test_a_method_without_attention_has_no_noise_auroc_and_refuses_to_rank_by_it():
    """A network without attention (a plain head): aux_loss only, so no noise_auroc; ranking the
    suspects by attention (or any score the method lacks) is one line at the first batch."""
    logits = torch.randn(4, C, generator=torch.Generator().manual_seed(6))
    labels = torch.tensor([0, 1, 2, 0])
    recorder = SampleRecorder(4, CEMethod(C), torch.device("cpu")).start(lambda: [0, 1, 2, 3])
    recorder(HeadOutputs(logits=logits), labels, 4)
    scores = recorder.finish()
    assert list(scores.values) == ["aux_loss"] and np.isnan(scores.attention).all()
    assert list(noise_aurocs(scores, np.array([True, False, False, True]))) == ["noise_auroc_aux_loss"]
    refusing = SampleRecorder(4, CEMethod(C), torch.device("cpu"), needed="attention").start(lambda: [0, 1, 2, 3])
    with pytest.raises(UserError, match=r"^trainer.suspects_by=attention: CEMethod has no such per-sample score "
                                        r"\(it has: aux_loss\)$"):
        refusing(HeadOutputs(logits=logits), labels, 4)
    check_ranges(TrainerConfig(suspects_by="uncertainty"), "trainer")  # a method's own: checked at the first batch
    with pytest.raises(UserError, match="trainer.suspects_by='two words'"):
        check_ranges(TrainerConfig(suspects_by="two words"), "trainer")


def test_sweep_table_shows_every_detector_the_jobs_have(tmp_path: Path):
    """A method's own noise_auroc_<score> is a column of the job and setting tables and of the printed one."""
    for job, (method, summary) in enumerate([
            ("adadf", {"noise_auroc": 70.0, "noise_auroc_aux_loss": 80.0}),
            ("rul", {"noise_auroc_aux_loss": 75.0, "noise_auroc_uncertainty": 65.0})]):
        d = tmp_path / str(job)
        (d / ".hydra").mkdir(parents=True)
        (d / ".hydra" / "overrides.yaml").write_text(f"- method={method}\n")
        (d / "summary.json").write_text(json.dumps({"status": "completed", "best_acc": 50.0, **summary}))
    jobs = job_table(tmp_path)
    assert [c for c in jobs if c.startswith("noise_auroc")] == [
        "noise_auroc", "noise_auroc_aux_loss", "noise_auroc_uncertainty"]
    settings = setting_table(jobs)
    assert settings["noise_auroc_uncertainty_mean"].tolist()[1] == 65.0
    table = format_table(tmp_path, jobs, settings)
    assert "noise AUROC: uncertainty" in table and "noise AUROC: aux loss" in table


def test_ranking_by_a_score_the_method_lacks_is_one_line_before_any_training(run_cli, tmp_path: Path):
    """Built-in methods declare their scores (``Method.score_names``): refused when the detector is
    built, before the first batch; an undeclared method's at its first recorded batch (above)."""
    from adadf.methods.rul import RULMethod

    with pytest.raises(UserError, match=r"^trainer.suspects_by=importance: RULMethod has no such per-sample"):
        SampleRecorder(4, RULMethod(C), torch.device("cpu"), needed="importance")
    out = tmp_path / "run"
    proc = run_cli([*FAST, "method=rul", "trainer.suspects_by=attention", f"hydra.run.dir={out}"], cwd=tmp_path)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "trainer.suspects_by=attention: RULMethod has no such per-sample score (it has: aux_loss, uncertainty)")
    assert not (out / "metrics.csv").exists() and not (out / "checkpoints").exists()
    log = out / "run.log"
    assert not log.exists() or "train batches/epoch" not in log.read_text()


def test_rul_uncertainty_is_a_detector_of_its_own(tmp_path: Path, cache_dir: Path):
    """method=rul under label noise: its uncertainty is a column and has its noise AUROC (high =
    suspect); its network has no attention, so no noise_auroc."""
    summary = train_here(tmp_path, cache_dir, "method=rul", "dataset.label_noise=0.25", "trainer.epochs=1",
                         "trainer.suspects_by=uncertainty")
    scores = pd.read_csv(tmp_path / "train_attention.csv")
    assert list(scores.columns)[4:6] == ["aux_loss", "uncertainty"] and "attention" not in scores
    seen = scores["uncertainty"].notna()
    assert summary["noise_auroc_uncertainty"] == pytest.approx(
        auroc_loop(scores.loc[seen, "uncertainty"].tolist(), scores.loc[seen, "flipped"].tolist()))
    assert "noise_auroc" not in summary and "noise_auroc_aux_loss" in summary
    suspects = pd.read_csv(tmp_path / "suspects.csv")
    assert suspects["uncertainty"].is_monotonic_decreasing
