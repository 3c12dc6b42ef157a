"""Trained models people can use: `python -m adadf.evaluate` and `python -m adadf.predict`."""
from __future__ import annotations

import json
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from adadf import inference
from adadf.data.synthetic import CLASS_NAMES
from adadf.engine.checkpoint import load_checkpoint
from adadf.errors import UserError
from adadf.evaluate import evaluate_checkpoint
from adadf.models import AdaDF
from adadf.predict import list_inputs, predict_command
from conftest import CONF, cli_env
from test_resume import completed_run

# The tiny synthetic dataset of TINY, as dataset overrides for a command given `dataset=synthetic`.
TINY_DATA = ["dataset=synthetic", "dataset.train_size=24", "dataset.test_size=7", "dataset.image_size=32",
             "dataset.batch_size=8", "dataset.num_workers=0"]


def compose_command(name: str, overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(name, overrides=overrides)


def evaluate_and_predict(run: Path, tmp_path: Path, num_classes: int = 7):
    """adadf-eval on ``run``'s last.pt (it must repeat the run's ``final_acc``) and adadf-predict on
    one seeded 32 px image: (the predicted probabilities [1, C], the checkpoint's model as inference
    builds it, the image as that model sees it [1, 3, H, W])."""
    checkpoint = run / "checkpoints" / "last.pt"
    cfg = compose_command("eval", [f"checkpoint={checkpoint}", "device=cpu", "progress=false", "logger=none"])
    result = evaluate_checkpoint(cfg, tmp_path / "eval")
    assert result["acc"] == pytest.approx(json.loads((run / "summary.json").read_text())["final_acc"], abs=1e-9)
    image = torch.randint(0, 256, (32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    Image.fromarray(image.numpy()).save(tmp_path / "face.png")
    predict_command(compose_command("predict", [f"checkpoint={checkpoint}", f"input={tmp_path / 'face.png'}",
                                                "device=cpu"]), tmp_path / "predict")
    frame = pd.read_csv(tmp_path / "predict" / "predictions.csv")
    probs = torch.tensor(frame[[c for c in frame.columns if c.startswith("prob_")]].to_numpy(), dtype=torch.float32)
    trained = inference.read_checkpoint(checkpoint)
    model = inference.load_model(trained, num_classes)
    x = inference.image_transform(trained.dataset_config)(Image.open(tmp_path / "face.png").convert("RGB"))[None]
    return probs, model, x


def run_module(module: str, args: list[str], cwd: Path, cache_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=cli_env(cache_dir),
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cache_dir) -> Path:
    """A one-epoch run on the tiny synthetic set; returns its run dir."""
    return completed_run(tmp_path_factory, cache_dir, "trained", "trainer.epochs=1")


@pytest.fixture(scope="module")
def test_split(trained: Path):
    """The run's test split as the trainer sees it: uint8 images [7, 3, 32, 32] and the dataset's
    on-device test transform (normalisation)."""
    config = load_checkpoint(trained / "checkpoints" / "last.pt")["config"]
    data = instantiate(OmegaConf.create(config["dataset"]), loader_seed=0)
    images = torch.cat([x for x, _ in data.test_loader])
    assert images.dtype == torch.uint8 and images.shape == (7, 3, 32, 32)
    return images, data.eval_batch_transform


@pytest.fixture(scope="module")
def test_images(test_split) -> torch.Tensor:
    return test_split[0]


def to_reference_file(run: Path, path: Path, num_classes: int | None = None) -> Path:
    """The run's model in the original Ada-DF checkpoint format (docs/runs.md), aliases included.
    ``num_classes`` < C keeps only the first rows of both classifiers (an incompatible file)."""
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    model = AdaDF(len(CLASS_NAMES))
    model.load_state_dict(state["model"])
    out: dict[str, torch.Tensor] = OrderedDict()

    def put(prefix: str, module: torch.nn.Module, rows: int | None = None) -> None:
        for key, value in module.state_dict().items():
            out[f"{prefix}.{key}"] = value[:rows] if rows else value

    for i, name in ((0, "conv1"), (1, "bn1"), (4, "layer1")):
        put(f"feature.{i}", getattr(model.trunk, name))
    for k, branch in ((1, model.aux_branch), (2, model.target_branch)):
        for i, layer in enumerate((branch.layer2, branch.layer3, branch.layer4)):
            put(f"branch_{k}.{i}", layer)
            put(f"branch_{k}_feature.{i}", layer)
        put(f"branch_{k}.4", branch.fc, num_classes)
        put(f"branch_{k}_classifier", branch.fc, num_classes)
    put("alpha_1.0", model.aux_attention)
    put("alpha_2.0", model.target_attention)
    torch.save({"epoch": 1, "state_dict": out, "acc": 0.0, "best_acc": 0.0, "optimizer": {},
                "class_distributions": state["method"]["class_dist"]}, path)
    return path


def reference_logits(run: Path, images: torch.Tensor, transform) -> torch.Tensor:
    """Target-branch logits [N, C] of the run's model on uint8 images, through the dataset's own
    test transform (what the trainer's evaluation computes)."""
    model = AdaDF(len(CLASS_NAMES))
    model.load_state_dict(load_checkpoint(run / "checkpoints" / "last.pt")["model"])
    with torch.no_grad():
        return model.eval()(transform(images))[1]


# ------------------------------------------------------------------------------------- evaluate
def test_evaluate_cli_reproduces_the_training_evaluation(trained: Path, tmp_path: Path, cache_dir: Path):
    out = tmp_path / "eval"
    proc = run_module("adadf.evaluate", [f"checkpoint={trained / 'checkpoints' / 'last.pt'}", "logger=wandb",
                                         "progress=false", f"hydra.run.dir={out}"], tmp_path, cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]

    train_summary = json.loads((trained / "summary.json").read_text())
    summary = json.loads((out / "eval_summary.json").read_text())
    assert summary["format"] == "adadf" and summary["epoch"] == 1 and summary["num_images"] == 7
    assert summary["acc"] == pytest.approx(train_summary["final_acc"], abs=1e-9)
    assert summary["mean_class_acc"] == pytest.approx(train_summary["final_mean_class_acc"], abs=1e-4)

    confusion = pd.read_csv(out / "confusion_matrix.csv", index_col=0)
    assert list(confusion.index) == CLASS_NAMES and list(confusion.columns) == CLASS_NAMES
    assert confusion.to_numpy().sum() == 7
    assert 100.0 * confusion.to_numpy().trace() / 7 == pytest.approx(summary["acc"])
    per_class = pd.read_csv(out / "per_class_acc.csv")
    assert per_class["class"].tolist() == CLASS_NAMES
    assert per_class["support"].tolist() == confusion.sum(axis=1).tolist()
    assert per_class["correct"].tolist() == [confusion.iloc[i, i] for i in range(len(CLASS_NAMES))]
    assert per_class["accuracy"].tolist() == pytest.approx([summary["per_class_acc"][c] for c in CLASS_NAMES], nan_ok=True)
    with Image.open(out / "confusion_matrix.png") as png:
        assert png.format == "PNG" and png.width > 200 and png.height > 200
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))


def test_evaluate_original_adadf_checkpoint(trained: Path, tmp_path: Path, cache_dir: Path):
    reference = to_reference_file(trained, tmp_path / "model_best.pth.tar")
    cfg = compose_command("eval", [f"checkpoint={reference}", *TINY_DATA, f"dataset.root={cache_dir}",
                                   "device=cpu", "progress=false"])
    summary = evaluate_checkpoint(cfg, tmp_path / "out")
    assert summary["format"] == "ada-df" and summary["epoch"] == 1
    assert summary["acc"] == pytest.approx(json.loads((trained / "summary.json").read_text())["final_acc"])
    assert (tmp_path / "out" / "confusion_matrix.png").is_file()

    # Without a dataset, the original file says nothing about its data: one line saying what to pass.
    with pytest.raises(UserError, match=r"dataset=raf"):
        evaluate_checkpoint(compose_command("eval", [f"checkpoint={reference}"]), tmp_path / "out2")


def test_evaluate_dataset_comes_from_the_checkpoint(trained: Path):
    checkpoint = inference.read_checkpoint(trained / "checkpoints" / "last.pt")
    assert checkpoint.format == "adadf" and checkpoint.class_names == CLASS_NAMES and checkpoint.num_classes == 7

    own = inference.dataset_config(checkpoint, compose_command("eval", ["checkpoint=x"]).dataset, "cmd")
    assert own == checkpoint.dataset_config and own["train_size"] == 24 and own["image_size"] == 32
    moved = inference.dataset_config(
        checkpoint, compose_command("eval", ["checkpoint=x", "dataset.root=/new/place", "dataset.batch_size=3"]).dataset,
        "cmd")
    assert moved == {**own, "root": "/new/place", "batch_size": 3}  # only what the user set changes
    named = inference.dataset_config(checkpoint, compose_command("eval", ["checkpoint=x", "dataset=synthetic"]).dataset,
                                     "cmd")
    group = OmegaConf.to_container(compose_command("config", ["dataset=synthetic"]).dataset)
    assert named == group and named != own  # a named group is taken as configured there


def test_incompatible_checkpoints_are_one_line(trained: Path, tmp_path: Path, cache_dir: Path):
    def fails(checkpoint: Path, *overrides: str) -> str:
        cfg = compose_command("eval", [f"checkpoint={checkpoint}", *overrides, "device=cpu", "progress=false"])
        with pytest.raises(UserError) as err:
            evaluate_checkpoint(cfg, tmp_path / "out")
        message = str(err.value)
        assert "\n" not in message and str(checkpoint) in message, message
        return message

    five = to_reference_file(trained, tmp_path / "five.pth.tar", num_classes=5)
    assert "has 5 classes but the model has 7" in fails(five, *TINY_DATA, f"dataset.root={cache_dir}")

    truncated = tmp_path / "truncated.pt"
    with open(trained / "checkpoints" / "last.pt", "rb") as f:
        truncated.write_bytes(f.read(50_000))
    assert "truncated, corrupt or not a PyTorch file" in fails(truncated)

    backbone_only = tmp_path / "resnet18_msceleb.pth"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(1000, 512)}},
               backbone_only)
    assert "not a trained Ada-DF model" in fails(backbone_only)

    # Same number of classes, other classes: refused rather than scored against the wrong names.
    state = load_checkpoint(trained / "checkpoints" / "last.pt")
    state["class_names"] = list(reversed(CLASS_NAMES))
    renamed = tmp_path / "renamed.pt"
    torch.save(state, renamed)
    assert "trained on classes" in fails(renamed)


# -------------------------------------------------------------------------------------- predict
@pytest.fixture
def image_folder(tmp_path: Path, test_images: torch.Tensor) -> Path:
    """faces/0.png ... 5.png (the first test images, lossless), faces/more/6.png, an unreadable
    faces/broken.jpg and a faces/notes.txt that is not an image."""
    folder = tmp_path / "faces"
    (folder / "more").mkdir(parents=True)
    for i, image in enumerate(test_images):
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / ("more" if i == 6 else "") / f"{i}.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (folder / "notes.txt").write_text("not an image\n")
    return folder


def test_predict_folder_matches_the_test_transform(trained: Path, tmp_path: Path, image_folder: Path,
                                                   test_split, caplog):
    test_images, transform = test_split
    checkpoint = trained / "checkpoints" / "last.pt"
    logits = reference_logits(trained, test_images, transform)  # [7, C]

    cfg = compose_command("predict", [f"checkpoint={checkpoint}", f"input={image_folder}", "device=cpu"])
    result = predict_command(cfg, tmp_path / "plain")
    assert result["skipped"] == [str(image_folder / "broken.jpg")]
    assert any("broken.jpg" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)

    frame = pd.read_csv(tmp_path / "plain" / "predictions.csv")
    expected_paths = [str(image_folder / f"{i}.png") for i in range(6)] + [str(image_folder / "more" / "6.png")]
    assert frame["path"].tolist() == expected_paths
    assert list(frame.columns) == ["path", "prediction", "confidence", *[f"prob_{c}" for c in CLASS_NAMES]]
    probs = torch.tensor(frame[[f"prob_{c}" for c in CLASS_NAMES]].to_numpy(), dtype=torch.float32)
    torch.testing.assert_close(probs, logits.softmax(1), rtol=0, atol=1e-6)
    assert frame["prediction"].tolist() == [CLASS_NAMES[i] for i in logits.argmax(1).tolist()]
    assert frame["confidence"].to_numpy() == pytest.approx(probs.max(1).values.numpy())

    # tta=true: logits averaged with those of the mirrored image.
    cfg = compose_command("predict", [f"checkpoint={checkpoint}", f"input={image_folder}", "device=cpu", "tta=true",
                                      f"output={tmp_path / 'tta.csv'}", "batch_size=3"])
    predict_command(cfg, tmp_path / "unused")
    tta = pd.read_csv(tmp_path / "tta.csv")
    flipped = reference_logits(trained, test_images.flip(-1), transform)
    expected = ((logits + flipped) / 2).softmax(1)
    got = torch.tensor(tta[[f"prob_{c}" for c in CLASS_NAMES]].to_numpy(), dtype=torch.float32)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert not torch.allclose(got, probs, atol=1e-6)


def test_predict_original_checkpoint_needs_and_uses_a_dataset(trained: Path, tmp_path: Path, image_folder: Path):
    reference = to_reference_file(trained, tmp_path / "checkpoint.pth.tar")
    image = image_folder / "3.png"
    with pytest.raises(UserError, match="dataset=raf"):
        predict_command(compose_command("predict", [f"checkpoint={reference}", f"input={image}"]), tmp_path)
    cfg = compose_command("predict", [f"checkpoint={reference}", f"input={image}", "dataset=synthetic",
                                      "dataset.image_size=32", "device=cpu"])
    predict_command(cfg, tmp_path / "out")
    frame = pd.read_csv(tmp_path / "out" / "predictions.csv")
    assert frame["path"].tolist() == [str(image)]
    assert [c for c in frame.columns if c.startswith("prob_")] == [f"prob_{c}" for c in CLASS_NAMES]


def test_predict_cli_list_file(trained: Path, tmp_path: Path, image_folder: Path, cache_dir: Path):
    listing = tmp_path / "list.txt"
    listing.write_text("# faces to label\nfaces/0.png\n\nfaces/missing.png\nfaces/more/6.png\n")
    out = tmp_path / "predict"
    proc = run_module("adadf.predict", [f"checkpoint={trained / 'checkpoints' / 'last.pt'}", f"input={listing}",
                                        "tta=true", f"hydra.run.dir={out}"], tmp_path, cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    warnings = [line for line in (proc.stdout + proc.stderr).splitlines() if "WARNING" in line]
    assert any("missing.png" in line for line in warnings), proc.stdout[-3000:]  # reported, not fatal
    frame = pd.read_csv(out / "predictions.csv")
    assert frame["path"].tolist() == [str(image_folder / "0.png"), str(image_folder / "more" / "6.png")]
    assert frame[[f"prob_{c}" for c in CLASS_NAMES]].sum(axis=1).to_numpy() == pytest.approx(1.0, abs=1e-5)

    bad = run_module("adadf.predict", [f"checkpoint={tmp_path / 'nothing.pt'}", f"input={listing}",
                                       f"hydra.run.dir={tmp_path / 'bad'}"], tmp_path, cache_dir)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    lines = [line for line in bad.stderr.splitlines() if "not found" in line]
    assert len(lines) == 1 and lines[0].startswith(str(tmp_path / "nothing.pt")), bad.stderr


def test_videos_in_an_input_folder_are_named_not_silently_dropped(tmp_path: Path, caplog):
    folder = tmp_path / "inputs"
    (folder / "sub").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(folder / "a.png")
    (folder / "sub" / "clip.mp4").write_bytes(b"not decoded here")
    with caplog.at_level("WARNING", logger="adadf.predict"):
        assert list_inputs(folder) == [(folder / "a.png").absolute()]
    assert "not predicting 1 video in the folder, only its 1 image" in caplog.text
    assert f"input={folder / 'sub' / 'clip.mp4'}" in caplog.text
    (folder / "a.png").unlink()
    with pytest.raises(UserError, match=r"no image files in this folder \(1 videos; predict a video on its own"):
        list_inputs(folder)
