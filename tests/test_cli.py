"""End to end: `python run.py` in a subprocess writes the output contract."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from conftest import FAST
from wandb_offline import wandb_run


def test_default_run_writes_contract(run_cli, tmp_path: Path):
    out = tmp_path / "run"
    proc = run_cli([*FAST, "logger=wandb", "logger.log_checkpoint=true", "trainer.epochs=2",
                    f"hydra.run.dir={out}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]

    metrics = pd.read_csv(out / "metrics.csv")
    for column in ["epoch", "lr", "train_loss", "train_acc", "test_acc", "test_mean_class_acc",
                   "epoch_time_s", "train_images_per_s"]:
        assert column in metrics, column
    assert metrics["epoch"].tolist() == [1, 2]
    assert all(math.isfinite(v) for v in metrics["train_loss"])
    assert metrics["lr"].iloc[1] < metrics["lr"].iloc[0]  # ExponentialLR stepped once per epoch

    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["epochs_completed"] == 2
    assert summary["best_acc"] == max(metrics["test_acc"])
    assert summary["final_acc"] == metrics["test_acc"].iloc[-1]
    for key in ("best_epoch", "best_mean_class_acc", "wall_time_s"):
        assert key in summary

    assert (out / "checkpoints" / "last.pt").is_file()
    assert (out / "checkpoints" / "best.pt").is_file()
    assert (out / ".hydra" / "config.yaml").is_file()
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list((out / "wandb").iterdir()) if (out / "wandb").exists() else "no wandb dir"
    assert list(runs[0].glob("*.wandb")), "offline run has no .wandb data file"
    logged = wandb_run(out)
    assert logged["exit_code"] == 0
    media_keys = {f"{key}/_type" for key in ["attention_histogram", "class_distributions", "suspects_grid",
                                             "suspects", "best/per_class_acc_table", "best/confusion_matrix_table"]}
    assert {"train_loss", "test_acc", *media_keys} <= logged["history"], logged["history"]
    assert {"best_acc", "final_acc"} <= logged["summary"], logged["summary"]
    images = [m for m in logged["media"] if m.startswith("images/")]
    for key, count in [("attention_histogram", 2), ("class_distributions", 2), ("suspects_grid", 1)]:
        assert len([m for m in images if m.startswith(f"images/{key}_") and m.endswith(".png")]) == count, images
    [table] = [m for m in logged["media"] if m.startswith("table/suspects_")]
    rows = json.loads((runs[0] / "files" / "media" / table).read_text())
    assert rows["columns"][0] == "image" and "suspicion" in rows["columns"]
    assert len(rows["data"]) == len(pd.read_csv(out / "suspects.csv"))
    [staged] = [files for name, files in logged["artifacts"].items() if name.endswith("-suspects")]
    assert len([p for p, _ in staged if p.startswith("media/images/")]) == len(rows["data"]), staged
    for _, local in staged:  # the table's images are kept with the run, not in the home directory
        assert Path(local).is_file() and Path(local).resolve().is_relative_to(out.resolve()), local
    [(name, local)] = logged["artifacts"]["model-best"]  # referenced in place, not a second copy
    assert name == "best.pt" and Path(local).resolve() == (out / "checkpoints" / "best.pt").resolve()
    assert not list(tmp_path.glob("*.pt")), "wrote outside the run dir"


def test_bad_override_exits_with_one_line(run_cli, tmp_path: Path):
    proc = run_cli([*FAST, "fusion.threshold=1.5", f"hydra.run.dir={tmp_path / 'bad'}"], cwd=tmp_path)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    # Hydra adds its own "Error executing job with overrides: [...]" line; ours is the one reason.
    lines = [line for line in proc.stderr.splitlines() if line.strip() and "Error executing job" not in line]
    reasons = [line for line in lines if "fusion.threshold" in line]
    assert reasons == ["fusion.threshold=1.5: expected a value in (0, 1)"], proc.stderr


def test_existing_run_dir_is_not_overwritten(run_cli, tmp_path: Path):
    out = tmp_path / "run"
    first = run_cli([*FAST, f"hydra.run.dir={out}"], cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    second = run_cli([*FAST, f"hydra.run.dir={out}"], cwd=tmp_path)
    assert second.returncode != 0
    assert "trainer.resume=auto" in second.stderr
    assert "Traceback" not in second.stderr


def test_resume_auto_continues(run_cli, tmp_path: Path):
    out = tmp_path / "run"
    first = run_cli([*FAST, f"hydra.run.dir={out}"], cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    second = run_cli([*FAST, "trainer.epochs=2", "trainer.resume=auto", f"hydra.run.dir={out}"], cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    metrics = pd.read_csv(out / "metrics.csv")
    assert metrics["epoch"].tolist() == [1, 2]
    assert json.loads((out / "summary.json").read_text())["epochs_completed"] == 2
