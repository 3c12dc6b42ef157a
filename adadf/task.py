"""The job wrapper: one place owns a training job's outcome.

- Before anything is written the run dir is claimed (an existing run is never overwritten) and the
  config validated: a refusal is one line and leaves no trace.
- After that every outcome is recorded in ``summary.json``: ``completed``, ``interrupted`` (Ctrl-C /
  SIGTERM, after the last checkpoint) or ``failed`` with the error line, and the logger is closed
  with the matching exit code.
- Outside a multirun an error then propagates (one line, non-zero exit). In a multirun a failed job
  is recorded and returns None so the sweep goes on (``SweepSummary`` exits non-zero at the end);
  an interrupt stops the whole sweep.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from adadf import app
from adadf.config import validate_config
from adadf.engine import distributed
from adadf.engine.interrupt import StopRequested
from adadf.errors import UserError
from adadf.tracking import RunFiles
from adadf.train import RunInterrupted, TrainingRun, find_resume_checkpoint

log = logging.getLogger(__name__)


def objective(summary: dict[str, Any]) -> float | None:
    """What a job returns to the sweeper (Optuna maximises it): the best validation accuracy when
    there is a validation split (``dataset.val_fraction`` > 0), else the best test accuracy."""
    value = summary.get("best_val_acc")
    return summary.get("best_acc") if value is None else value


def _empty_summary(status: str, wall_time_s: float) -> dict[str, Any]:
    return {"best_acc": None, "best_epoch": None, "final_acc": None, "best_mean_class_acc": None,
            "epochs_completed": 0, "status": status, "wall_time_s": wall_time_s}


def _error_line(err: BaseException) -> str:
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    kind = "" if isinstance(err, UserError) else type(err).__name__
    return ": ".join(part for part in (kind, first) if part)


@dataclass
class Claim:
    """A job allowed to start: its place among the ranks, its device, run dir and resume point."""

    world: distributed.World
    device: torch.device
    files: RunFiles
    resume_from: Path | None


def claim(cfg: DictConfig) -> Claim:
    """Validate ``cfg`` and take the run dir; raises a one-line ``UserError`` before writing anything."""
    trainer_cfg = validate_config(cfg)["trainer"]
    world, device = distributed.init_distributed(app.resolve_device(trainer_cfg.device))
    files = RunFiles(distributed.broadcast_object(app.run_dir()))  # every rank: rank 0's run dir
    if not world.is_main:
        distributed.remove_empty_dir(app.run_dir(), keep=files.run_dir)
    resume_from = find_resume_checkpoint(trainer_cfg.resume, files) if world.is_main else None
    return Claim(world, device, files, distributed.broadcast_object(resume_from))


def execute(cfg: DictConfig, job: Claim) -> dict[str, Any]:
    """Train a claimed job: its summary, always recorded; an error is recorded, then raised."""
    started = time.perf_counter()
    run: TrainingRun | None = None
    status, error = "failed", None
    try:
        run = TrainingRun(cfg, job.world, job.device, job.files, job.resume_from)
        run.fit()
        status = "completed"
    except (StopRequested, KeyboardInterrupt) as stopped:  # KeyboardInterrupt: a second Ctrl-C
        status = "interrupted"
        error = RunInterrupted(
            f"stopped by {getattr(stopped, 'signame', 'SIGINT')} after epoch {run.epoch if run else 0}; "
            f"continue with trainer.resume=auto hydra.run.dir={job.files.run_dir}"
        )
    except Exception as err:  # noqa: BLE001 - recorded below, then raised
        error = err
    wall = time.perf_counter() - started
    summary = run.summary(status, wall) if run else _empty_summary(status, wall)
    if status == "failed":
        summary["error"] = _error_line(error)
    if job.world.is_main:
        job.files.write_summary(summary)
    if run is not None:
        run.report(summary, exit_code=0 if error is None else 1)
    if error is not None:
        raise error
    log.info("best test acc %.2f%% (epoch %s), final %.2f%%", summary["best_acc"], summary["best_epoch"],
             summary["final_acc"])
    return summary


def train(cfg: DictConfig) -> dict[str, Any]:
    """Claim the run dir, then train (``python run.py`` without ``-m``)."""
    return execute(cfg, claim(cfg))


def run_task(cfg: DictConfig) -> float | None:
    """What ``run.py`` runs for each job: the objective, or None for a failed job of a multirun."""
    if not app.in_multirun():
        return objective(train(cfg))
    try:
        job = claim(cfg)
    except UserError as err:  # a bad value in this job's overrides: record it in the job's own dir
        files = RunFiles(app.run_dir())
        if not files.last_checkpoint.exists():  # never over an earlier run's record
            files.write_summary({**_empty_summary("failed", 0.0), "error": _error_line(err)})
        log.error("job failed: %s", _error_line(err))
        return None
    try:
        return objective(execute(cfg, job))
    except RunInterrupted as err:
        raise SystemExit(f"{err}\nsweep stopped; rebuild its table with: python -m adadf.tracking.sweep "
                         f"{app.sweep_dir()}") from None
    except Exception as err:  # noqa: BLE001 - recorded by execute; one failed job must not stop the sweep
        if isinstance(err, UserError):
            log.error("job failed: %s", _error_line(err))
        else:
            log.error("job failed", exc_info=err)
        return None
