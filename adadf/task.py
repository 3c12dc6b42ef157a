"""The job wrapper: one place owns a training job's outcome.

- Before anything is written the config is validated and the run dir claimed: its lock taken (one
  run per dir, ``adadf.engine.rundir``), an existing run never overwritten, a checkpoint to resume
  from checked against the config. A refusal is one line and leaves no trace in a dir another run
  owns; in a dir no run owns a failed start is recorded like any failure.
- Only a claimed job writes ``.hydra/`` (``hydra.output_subdir`` is null in conf/config.yaml; the
  same three files Hydra writes), so a refused command never rewrites an existing run's record.
- After that every outcome is recorded in ``summary.json``: ``completed``, ``interrupted`` (Ctrl-C /
  SIGTERM, after the last checkpoint) or ``failed`` with the error line (also in ``run.log``), and
  the logger is closed with the matching exit code.
- Outside a multirun an error then propagates (one line, non-zero exit). In a multirun a failed job
  is recorded and returns None so the sweep goes on (``SweepSummary`` exits non-zero at the end);
  an interrupt stops the whole sweep.
"""
from __future__ import annotations

import contextlib
import logging
import shlex
import shutil
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from omegaconf import DictConfig

from adadf import app
from adadf.atomic import atomic_path, stale_temp_files
from adadf.config import validate_config
from adadf.engine import distributed
from adadf.engine.interrupt import StopRequested
from adadf.engine.rundir import RunDirBusy, RunLock
from adadf.errors import UserError, first_line
from adadf.tracking import RunFiles
from adadf.tracking.sweep import note_refusal
from adadf.words import counted
from adadf.train import ResumePoint, RunInterrupted, TrainingRun, check_resume, find_resume_checkpoint

log = logging.getLogger(__name__)


def objective(summary: dict[str, Any]) -> float | None:
    """What a job returns to the sweeper (Optuna maximises it): the best validation accuracy when
    there is a validation split (``dataset.val_fraction`` > 0), else the best test accuracy."""
    value = summary.get("best_val_acc")
    return summary.get("best_acc") if value is None else value


def _empty_summary(status: str, wall_time_s: float) -> dict[str, Any]:
    return {"best_acc": None, "best_epoch": None, "final_acc": None, "best_mean_class_acc": None,
            "epochs_completed": 0, "status": status, "wall_time_s": wall_time_s,
            "wall_time_this_run_s": wall_time_s}


def _error_line(err: BaseException) -> str:
    first = first_line(err, empty="")
    kind = "" if isinstance(err, UserError) else type(err).__name__
    return ": ".join(part for part in (kind, first) if part)


def apply_keep_last(policy: bool | str, files: RunFiles) -> None:
    """``trainer.keep_last`` for a completed run: last.pt holds the optimizer state (~3x best.pt) and is
    only needed to resume or extend the run. auto drops it for a sweep's jobs (dozens of them) and
    keeps it otherwise; true keeps it; false drops it. A run that did not complete always keeps it."""
    drop = policy is False or (policy == "auto" and app.in_multirun())
    if not drop or not files.last_checkpoint.exists():
        return
    size = files.last_checkpoint.stat().st_size
    files.last_checkpoint.unlink()
    log.info("removed %s (%.0f MB, trainer.keep_last=%s): the run is complete; best.pt stays (pass "
             "trainer.keep_last=true to keep last.pt for extending a run)", files.last_checkpoint, size / 2**20,
             str(policy).lower())


def disk_bytes(path: Path) -> int:
    """Bytes of every file under ``path`` (links not followed; a file another thread removes
    meanwhile, such as a W&B temp file, counts nothing)."""
    total = 0
    for entry in Path(path).rglob("*"):
        try:
            st = entry.lstat()
        except FileNotFoundError:
            continue
        total += st.st_size if stat.S_ISREG(st.st_mode) else 0
    return total


def out_of_memory(err: BaseException, cfg: DictConfig, device: torch.device) -> UserError | None:
    """Running out of memory (CPU or GPU) as one line naming the keys that size it, else None."""
    text = str(err)
    if not (isinstance(err, (MemoryError, torch.OutOfMemoryError)) or "can't allocate memory" in text
            or "out of memory" in text.lower()):
        return None
    return UserError(
        f"out of memory on {device} with dataset.batch_size={cfg.dataset.batch_size} and "
        f"dataset.image_size={cfg.dataset.image_size} ({first_line(err, limit=120)}): lower dataset.batch_size "
        "or dataset.image_size"
    )


def _log_to_file(line: str) -> None:
    """``line`` into run.log only: the console shows the error once already (``adadf.cli``)."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, line, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def _remove_stale_temp_files(files: RunFiles) -> None:
    """Temp files a killed run (``kill -9`` mid-write) left beside its checkpoints: hundreds of MB."""
    stale = stale_temp_files(files.checkpoint_dir)
    size = sum(p.stat().st_size for p in stale)
    for path in stale:
        path.unlink(missing_ok=True)
    if stale:
        log.info("removed %s (%.1f MB) a killed run left in %s", counted(len(stale), "temp file"), size / 2**20,
                 files.checkpoint_dir)


@dataclass
class Claim:
    """A job allowed to start: its place among the ranks, its device, run dir and resume point."""

    world: distributed.World
    device: torch.device
    files: RunFiles
    resume_from: Path | None
    lock: RunLock | None = None  # rank 0: held until the job's outcome is recorded
    checked: ResumePoint | None = None  # rank 0: the checkpoint at resume_from, read and checked
    record: dict[str, str] | None = None  # rank 0 of a resume: .hydra/, written once the restore succeeded

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()


def claim(cfg: DictConfig) -> Claim:
    """Validate ``cfg`` and take the run dir; raises a one-line ``UserError`` before writing anything
    but the lock. Rank 0 then owns the dir: stale temp files go, ``.hydra/`` is written."""
    trainer_cfg = validate_config(cfg)["trainer"]
    app.preflight(cfg)
    world, device = distributed.init_distributed(app.resolve_device(trainer_cfg.device))
    files = RunFiles(distributed.broadcast_object(app.run_dir()))  # every rank: rank 0's run dir
    if not world.is_main:
        distributed.remove_empty_dir(app.run_dir(), keep=files.run_dir)
        return Claim(world, device, files, distributed.broadcast_object(None))
    lock = RunLock(files.run_dir).acquire()
    try:
        resume_from = find_resume_checkpoint(trainer_cfg.resume, files)
        checked = check_resume(resume_from, cfg, trainer_cfg.resume_allow_changes) if resume_from else None
        _remove_stale_temp_files(files)
        record = app.hydra_record(cfg)
        if resume_from is None:
            files.write_hydra_record(record)
    except BaseException:
        lock.release()
        raise
    return Claim(world, device, files, distributed.broadcast_object(resume_from), lock, checked,
                 record if resume_from is not None else None)


def record_refusal(cfg: DictConfig, err: UserError) -> None:
    """A job that failed before claiming its dir (a bad value, a missing checkpoint) records that, as a
    claimed job would (summary.json with the error line, .hydra/, run.log), but only in a dir no run
    owns: never where a checkpoint exists or another run holds the lock."""
    files = RunFiles(app.run_dir())
    if not distributed.env_world().is_main:
        return
    if isinstance(err, RunDirBusy) or files.run_record():
        if app.in_multirun():  # the sweep's table must not count the earlier run's files as this job's
            note_refusal(app.sweep_dir(), files.run_dir, _error_line(err))
        return
    try:
        lock = RunLock(files.run_dir).acquire()
    except (UserError, OSError):
        return
    try:
        if not files.run_record():
            files.write_summary({**_empty_summary("failed", 0.0), "error": _error_line(err)})
            files.write_hydra_record(app.hydra_record(cfg))
            if not app.in_multirun():  # a multirun's job logs "job failed: ..." to console and file
                _log_to_file(_error_line(err))
    except OSError as write_err:
        log.warning("could not record the failure in %s: %s", files.run_dir, write_err)
    finally:
        lock.release()


def start(cfg: DictConfig, job: Claim) -> TrainingRun:
    """Build the run and restore its checkpoint; a resumed run's ``.hydra/`` is rewritten only then."""
    checked, job.checked = job.checked, None  # the checkpoint's contents: not kept past the restore
    run = TrainingRun(cfg, job.world, job.device, job.files, job.resume_from, checked)
    if job.record is not None:
        job.files.write_hydra_record(job.record)
        _adopt_best(job.resume_from, job.files)
    return run


def _adopt_best(resume_from: Path, files: RunFiles) -> None:
    """A run resumed from another dir (``trainer.resume=<old>/last.pt``) starts with that run's
    best.pt, so the new dir is whole (adadf-eval needs it) even before an epoch improves on it."""
    best = resume_from.with_name("best.pt")
    if best == files.best_checkpoint or not best.is_file() or files.best_checkpoint.exists():
        return
    with atomic_path(files.best_checkpoint) as tmp:
        shutil.copyfile(best, tmp)
    log.info("copied %s into %s", best, files.checkpoint_dir)


def execute(cfg: DictConfig, job: Claim) -> dict[str, Any]:
    """Train a claimed job: its summary, always recorded; an error is recorded, then raised.

    A resume that fails before its checkpoint is restored (another class list, data that moved) is a
    refusal: raised with the run's files as they were."""
    started = time.perf_counter()
    run = None
    if job.resume_from is not None:
        try:
            run = start(cfg, job)
        except KeyboardInterrupt:
            raise RunInterrupted(f"stopped by SIGINT before the run was restored; {job.files.run_dir} is "
                                 "as it was") from None
        except Exception as err:
            if app.in_multirun() and job.world.is_main:  # its dir keeps the earlier run's summary
                note_refusal(app.sweep_dir(), job.files.run_dir, _error_line(err))
            raise
    status, error = "failed", None
    try:
        run = run or start(cfg, job)
        run.fit()
        status = "completed"
    except (StopRequested, KeyboardInterrupt) as stopped:  # KeyboardInterrupt: a second Ctrl-C
        status = "interrupted"
        error = RunInterrupted(
            f"stopped by {getattr(stopped, 'signame', 'SIGINT')} after epoch {run.epoch if run else 0}; "
            f"continue with trainer.resume=auto hydra.run.dir={shlex.quote(str(job.files.run_dir))}"
        )
    except Exception as err:  # noqa: BLE001 - recorded below, then raised
        error = out_of_memory(err, cfg, job.device) or err
    wall = time.perf_counter() - started
    summary = run.summary(status, wall) if run else _empty_summary(status, wall)
    if status == "failed":
        summary["error"] = _error_line(error)
    if job.world.is_main:
        if status == "completed":
            apply_keep_last(cfg.trainer.get("keep_last", True), job.files)
        summary["disk_mb"] = round(disk_bytes(job.files.run_dir) / 2**20, 1)  # what the run left on disk
        try:
            if run is not None and status != "completed" and run.trainer.progress.history:
                job.files.write_metrics(run.trainer.progress.history)  # the epochs the checkpoints hold
            job.files.write_summary(summary)
        except OSError as err:  # a full disk: the error that stopped the run still goes out below
            if error is None:
                raise
            log.warning("could not write %s: %s", job.files.summary, err)
        if error is not None and not app.in_multirun():  # a multirun's job logs it to console and file
            _log_to_file(str(error) if status == "interrupted" else _error_line(error))
    if run is not None:
        run.report(summary, exit_code=0 if error is None else 1)
    if error is not None:
        raise error
    log.info("best test acc %.2f%% (epoch %s), final %.2f%%", summary["best_acc"], summary["best_epoch"],
             summary["final_acc"])
    return summary


def train(cfg: DictConfig) -> dict[str, Any]:
    """Claim the run dir, then train (``python run.py`` without ``-m``)."""
    try:
        job = claim(cfg)
    except UserError as err:
        record_refusal(cfg, err)
        raise
    try:
        return execute(cfg, job)
    finally:
        job.release()


class _JobLabel(logging.Filter):
    """Starts each log line of a multirun job with ``[job N]`` (once, whatever the handlers)."""

    def __init__(self, number: int) -> None:
        super().__init__()
        self.label = f"[job {number}] "

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "adadf_job_label", False):
            record.msg, record.adadf_job_label = f"{self.label}{record.msg}", True
        return True


@contextlib.contextmanager
def job_labelled(number: int) -> Iterator[None]:
    """Label this job's log lines on every handler of the root logger while the block runs."""
    label, handlers = _JobLabel(number), list(logging.getLogger().handlers)
    for handler in handlers:
        handler.addFilter(label)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(label)


def run_task(cfg: DictConfig) -> float | None:
    """What ``run.py`` runs for each job: the objective, or None for a failed job of a multirun."""
    if not app.in_multirun():
        return objective(train(cfg))
    with job_labelled(app.job_number()):  # parallel jobs share one console
        try:
            return objective(train(cfg))  # a failure is recorded in the job's dir before it gets here
        except RunInterrupted as err:
            raise SystemExit(f"{err}\nsweep stopped; rebuild its table with: python -m adadf.tracking.sweep "
                             f"{shlex.quote(str(app.sweep_dir()))}") from None
        except Exception as err:  # noqa: BLE001 - one failed job must not stop the sweep
            if isinstance(err, UserError):
                log.error("job failed: %s", _error_line(err))
            else:
                log.error("job failed", exc_info=err)
            return None
