"""Sweeps: `python run.py -m ...` with tiny 1-epoch jobs, the W&B group, the summary table, failures."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import IntervalSweep

from conftest import CONF, FAST, ROOT
from wandb_offline import wandb_run
from adadf.config import validate_config
from adadf import task as task_mod
from adadf.tracking import sweep as sweep_mod

SWEEPS = CONF / "sweep"  # the config group `sweep` (-m sweep=<name>)
WANDB_SWEEPS = ROOT / "sweeps" / "wandb"  # W&B's own sweep files, for a checkout: they run run.py


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------
def job_dirs(sweep_dir: Path) -> list[Path]:
    return sorted((p for p in sweep_dir.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))


def summary(job: Path) -> dict:
    return json.loads((job / "summary.json").read_text())


def assert_one_failed_job_recorded(proc, sweep_dir: Path, bad_key: str) -> None:
    """Job 0 failed (a bad value), job 1 still ran; the sweep exits non-zero with its table."""
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "1 of 2 jobs failed" in proc.stderr, proc.stderr[-2000:]
    bad, good = job_dirs(sweep_dir)
    assert summary(bad)["status"] == "failed" and bad_key in summary(bad)["error"]
    assert summary(good)["status"] == "completed" and summary(good)["epochs_completed"] == 1
    table = pd.read_csv(sweep_dir / sweep_mod.JOB_CSV)
    assert table["status"].tolist() == ["failed", "completed"]
    assert bad_key in table["error"].iloc[0]
    assert "failed: job 0 (" in proc.stdout


# --------------------------------------------------------------------------------------------
# Real sweeps
# --------------------------------------------------------------------------------------------
def test_grid_with_seeds_one_wandb_group_and_mean_std(run_cli, tmp_path: Path):
    sweep_dir = tmp_path / "grid"
    proc = run_cli(["-m", *FAST, "logger=wandb", "fusion.beta=3,5", "seed=0,1",
                    f"hydra.sweep.dir={sweep_dir}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]

    jobs = job_dirs(sweep_dir)
    assert [j.name for j in jobs] == ["0", "1", "2", "3"]
    summaries = [summary(j) for j in jobs]
    assert all(s["status"] == "completed" for s in summaries)

    runs = [wandb_run(j) for j in jobs]
    assert {r["group"] for r in runs} == {f"{tmp_path.name}-grid"}  # one group, named after the sweep
    assert len({r["name"] for r in runs}) == 4 and all("fusion.beta=" in r["name"] for r in runs)
    for run in runs:
        assert "multirun" in run["tags"] and run["job_type"] == "train" and run["exit_code"] == 0
        assert {"fusion", "dataset", "seed"} <= run["config"]  # the resolved config
        assert {"test_acc", "train_loss", "epoch"} <= run["history"]  # per-epoch metrics
        assert {"best_acc", "final_acc", "best/acc_Happiness"} <= run["summary"]
        assert any(k.startswith("best/confusion_matrix") for k in run["history"])  # W&B's own plot

    table = pd.read_csv(sweep_dir / sweep_mod.JOB_CSV)
    assert len(table) == 4
    for column in ["overrides", "status", "best_acc", "final_acc", "best_mean_class_acc", "fusion.beta",
                   "seed", "setting"]:
        assert column in table, column
    assert table["best_acc"].tolist() == pytest.approx([s["best_acc"] for s in summaries])

    settings = pd.read_csv(sweep_dir / sweep_mod.SETTING_CSV)
    assert settings["setting"].tolist() == ["fusion.beta=3", "fusion.beta=5"]  # seeds grouped
    assert settings["completed"].tolist() == [2, 2]
    for _, row in settings.iterrows():
        accs = table.loc[table["setting"] == row["setting"], "best_acc"]
        assert row["best_acc_mean"] == pytest.approx(accs.mean())
        assert row["best_acc_std"] == pytest.approx(accs.std(ddof=1))  # sample std over the seeds
        mean, std = row["best_acc_mean"], row["best_acc_std"]
        assert f"{mean:.2f} ± {std:.2f}" in proc.stdout  # the printed table
    assert "best test acc [ref]" in proc.stdout

    # The rebuild command writes the same files for the same dir.
    (sweep_dir / sweep_mod.JOB_CSV).unlink()
    assert sweep_mod.main([str(sweep_dir)]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(sweep_dir / sweep_mod.JOB_CSV), table)


def test_failing_job_is_recorded_and_sweep_goes_on(run_cli, tmp_path: Path):
    # Hydra's basic sweeper would re-raise job 0's error after the batch and skip the summary.
    sweep_dir = tmp_path / "sweep"
    proc = run_cli(["-m", *FAST, "fusion.threshold=1.5,0.7", f"hydra.sweep.dir={sweep_dir}"], cwd=tmp_path)
    assert_one_failed_job_recorded(proc, sweep_dir, "fusion.threshold")


def test_joblib_launcher_with_a_failing_job(run_cli, tmp_path: Path):
    sweep_dir = tmp_path / "sweep"
    proc = run_cli(["-m", *FAST, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "fusion.beta=0.5,3",
                    f"hydra.sweep.dir={sweep_dir}"], cwd=tmp_path)
    assert "joblib" in yaml.safe_load((sweep_dir / "multirun.yaml").read_text())["hydra"]["launcher"]["_target_"]
    assert_one_failed_job_recorded(proc, sweep_dir, "fusion.beta")


def test_submitit_local_launcher(run_cli, tmp_path: Path):
    """The submitit executor SLURM users get, as local processes: both jobs run and are summarised."""
    sweep_dir = tmp_path / "sweep"
    proc = run_cli(["-m", *FAST, "hydra/launcher=submitit_local", "logger=csv", "seed=0,1",
                    f"hydra.sweep.dir={sweep_dir}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "submitit" in yaml.safe_load((sweep_dir / "multirun.yaml").read_text())["hydra"]["launcher"]["_target_"]
    assert [summary(j)["status"] for j in job_dirs(sweep_dir)] == ["completed", "completed"]
    assert len(pd.read_csv(sweep_dir / sweep_mod.JOB_CSV)) == 2


def test_optuna_sweep_two_trials_on_validation_accuracy(run_cli, tmp_path: Path):
    sweep_dir = tmp_path / "optuna"
    proc = run_cli(["-m", "sweep=fusion_optuna", *FAST, "hydra.sweeper.n_trials=2",
                    f"hydra.sweep.dir={sweep_dir}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summaries = [summary(j) for j in job_dirs(sweep_dir)]
    assert len(summaries) == 2 and all(s["status"] == "completed" for s in summaries)
    # The sweep holds out a validation split; Optuna maximised best_val_acc, not the test figure.
    result = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert result["best_value"] == pytest.approx(max(s["best_val_acc"] for s in summaries))
    assert set(result["best_params"]) == {"fusion.threshold", "fusion.beta", "fusion.max_weight",
                                          "fusion.min_weight"}
    table = pd.read_csv(sweep_dir / sweep_mod.JOB_CSV)
    assert table["test_acc_at_best_val"].tolist() == pytest.approx([s["test_acc_at_best_val"] for s in summaries])
    assert "test acc @ best val [honest]" in proc.stdout and "best test acc [ref]" in proc.stdout
    log = proc.stdout + proc.stderr  # plain lines for a file or a pipe (issue 19)
    assert "\x1b[" not in log and "setup plugin alembic" not in log and "A new study created" in log


# --------------------------------------------------------------------------------------------
# Pieces
# --------------------------------------------------------------------------------------------
def test_failure_during_training_ends_wandb_run_with_nonzero_exit(compose_cfg, cache_dir, tmp_path, monkeypatch):
    from adadf import train as train_mod

    def broken_fit(self):
        raise RuntimeError("boom in epoch 1")

    monkeypatch.setenv("ADADF_CACHE_DIR", str(cache_dir))
    monkeypatch.chdir(tmp_path)  # outside Hydra the run dir is the cwd
    monkeypatch.setattr(train_mod.Trainer, "fit", broken_fit)
    cfg = compose_cfg([*FAST, "logger=wandb"])
    with pytest.raises(RuntimeError, match="boom"):
        task_mod.train(cfg)
    assert summary(tmp_path)["status"] == "failed"
    assert wandb_run(tmp_path)["exit_code"] == 1


@pytest.mark.parametrize("path", sorted(SWEEPS.glob("*.yaml")), ids=lambda p: p.stem)
def test_sweep_params_are_valid_overrides(compose_cfg, path: Path):
    """Every value a sweep in adadf/conf/sweep/ sets composes and passes validation (first/last of ranges)."""
    cfg = yaml.safe_load(path.read_text())
    params = cfg["hydra"]["sweeper"]["params"]
    assert params
    parser = OverridesParser.create()
    for key, spec in params.items():
        override = parser.parse_override(f"{key}={spec}")
        if isinstance(override.value(), IntervalSweep):
            values = [override.value().start, override.value().end]
        else:
            values = list(override.sweep_string_iterator())
            values = values[:1] + values[-1:]
        for value in values:
            validate_config(compose_cfg([f"{key}={value}"]))


def test_sweep_group_is_found_by_run_py(run_cli, tmp_path: Path):
    proc = run_cli(["sweep=fusion_grid", "--cfg", "hydra"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    hydra_cfg = yaml.safe_load(proc.stdout)["hydra"]
    assert hydra_cfg["mode"] == "MULTIRUN"
    assert hydra_cfg["sweeper"]["params"] == {"fusion.threshold": "0.5,0.6,0.7,0.8,0.9", "fusion.beta": "1,3,5"}


def test_wandb_sweep_yaml_drives_run_py_with_valid_overrides(compose_cfg):
    [path] = WANDB_SWEEPS.glob("*.yaml")
    spec = yaml.safe_load(path.read_text())
    assert (ROOT / spec["program"]).is_file() and spec["program"] == "run.py"
    assert spec["command"] == ["${env}", "${interpreter}", "${program}", "${args_no_hyphens}"]
    first = []
    for key, param in spec["parameters"].items():
        if "values" in param:
            values = param["values"]
        elif "value" in param:
            values = [param["value"]]
        else:
            values = [param["min"], param["max"]]
        for value in values:
            validate_config(compose_cfg([f"{key}={value}"]))
        first.append(f"{key}={values[0]}")
    cfg = compose_cfg(first)  # all of them together, as one agent run gets them
    validate_config(cfg)
    assert cfg.logger.mode == "online" and cfg.dataset.val_fraction > 0
    assert spec["metric"]["name"] == "best_val_acc"


def test_rebuild_command_rejects_a_dir_without_jobs(tmp_path: Path):
    with pytest.raises(SystemExit) as exit_info:
        sweep_mod.main([str(tmp_path)])
    assert exit_info.value.code == 2


def test_objective_prefers_validation_accuracy():
    assert task_mod.objective({"best_acc": 80.0}) == 80.0
    assert task_mod.objective({"best_acc": 80.0, "best_val_acc": 75.0}) == 75.0
    assert task_mod.objective({"best_acc": None, "status": "failed"}) is None
