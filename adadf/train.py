"""A training run: its parts built from the config, resumed if asked, fitted, reported.

``adadf.task`` owns the outcome (status, summary.json, exit code); this module owns the work.
``adadf.task.claim`` runs first (with ``find_resume_checkpoint``) and refuses before anything is written.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from adadf import app
from adadf.config.dataset import DatasetConfig, dataset_schema
from adadf.engine import distributed
from adadf.engine.checkpoint import load_checkpoint, seed_everything
from adadf.engine.interrupt import StopFlag
from adadf.engine.trainer import Trainer
from adadf.errors import UserError, first_line
from adadf.tracking import RunFiles

log = logging.getLogger(__name__)


class RunInterrupted(UserError):
    """SIGINT/SIGTERM stopped the run; the last completed epoch's checkpoint is kept."""


def find_resume_checkpoint(resume: str | None, files: RunFiles) -> Path | None:
    """``trainer.resume``: null (a new run: only into a dir that holds no run), auto (this run dir's
    last.pt; a new run where the dir holds no run) or a file/run dir. A dir that holds a run's files
    is never overwritten: a new run there is refused, so is a resume from elsewhere into it."""
    record = files.run_record()
    if resume == "auto" and files.last_checkpoint.exists():
        return files.last_checkpoint
    if resume is None or resume == "auto":
        if record:
            raise UserError(_holds_a_run(files, record))
        return None
    path = Path(resume).expanduser().resolve()
    if path.is_dir():
        candidates = [path / "checkpoints" / "last.pt", path / "last.pt"]
        path = next((c for c in candidates if c.is_file()), candidates[0])
    if not path.is_file():
        raise UserError(f"trainer.resume={resume}: no checkpoint at {path}")
    if record and path != files.last_checkpoint.resolve():
        raise UserError(f"trainer.resume={resume}: {_holds_a_run(files, record)}")
    return path


def _holds_a_run(files: RunFiles, record: list[Path]) -> str:
    """Why a new run may not start in ``files.run_dir``, and what to do instead."""
    names = ", ".join(str(p.relative_to(files.run_dir)) for p in record)
    if files.last_checkpoint.exists():
        return (f"{files.run_dir} holds a run ({names}): pass trainer.resume=auto to continue it, "
                "or choose another hydra.run.dir")
    best = (f"; start a new run from its weights with backbone.checkpoint={files.best_checkpoint}"
            if files.best_checkpoint.exists() else "")
    return (f"{files.run_dir} holds a run ({names}) whose checkpoints/last.pt is gone, so it cannot be "
            f"continued and is not overwritten: choose another hydra.run.dir{best}")


# Groups and keys whose values shape the training: a resumed run must go on with the same ones
# (less the dataset keys that say how data are read, not what they are: its schema's RESUME_FREE).
RESUME_CHECKED = ("fusion", "method", "optimizer", "scheduler", "dataset", "seed")


@dataclass
class ResumePoint:
    """A checkpoint that fits the config, read once: its contents and the values that changed."""

    path: Path
    state: dict[str, Any]
    changes: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # key -> (checkpoint's, now)


def _flat(node: Any, prefix: str) -> dict[str, Any]:
    if not isinstance(node, dict):
        return {prefix: node}
    out: dict[str, Any] = {}
    for key, value in node.items():
        out |= _flat(value, f"{prefix}.{key}")
    return out


def config_changes(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Values of ``RESUME_CHECKED`` that differ between a checkpoint's config and now.

    A key either side lacks (a key added since the checkpoint was written) and a value the config
    leaves null (auto: resolved at run time, e.g. ``fusion.detach_target``) count as unchanged;
    ``method.params`` mirrors ``fusion`` and is left out, and so are the dataset's ``RESUME_FREE`` keys.
    """
    schema = dataset_schema((saved.get("dataset") or {}).get("_target_"))
    free = {f"dataset.{key}" for key in (schema.RESUME_FREE if schema else DatasetConfig.RESUME_FREE)}
    changes = {}
    for group in RESUME_CHECKED:
        old, new = _flat(saved.get(group, {}), group), _flat(current.get(group, {}), group)
        for key in sorted(old.keys() & new.keys()):
            if (key.startswith("method.params.") or key in free or new[key] is None
                    or old[key] == new[key]):
                continue
            changes[key] = (old[key], new[key])
    return changes


def check_resume(path: Path, cfg: DictConfig, allow_changes: bool) -> ResumePoint:
    """Read the checkpoint to resume from and refuse, in one line, one that does not fit ``cfg``:
    weights only (a best.pt), another backbone, or changed training values (unless allowed)."""
    state = load_checkpoint(path)
    if "optimizer" not in state:
        last = path.with_name("last.pt")
        where = f" ({last})" if last.is_file() and last != path else ""
        raise UserError(
            f"{path}: holds weights only (a best.pt: no optimizer, scheduler or RNG state); resuming needs "
            f"the run's last.pt{where}, or start a new run from these weights with backbone.checkpoint={path}"
        )
    saved = state.get("config") or {}
    current = OmegaConf.to_container(cfg, resolve=True)
    old_backbone = (saved.get("backbone") or {}).get("name")
    new_backbone = current["backbone"].get("name")
    if old_backbone is not None and old_backbone != new_backbone:
        raise UserError(
            f"{path}: does not fit this config: the checkpoint was trained with backbone {old_backbone}, "
            f"the config has backbone.name={new_backbone} (resume with backbone.name={old_backbone})"
        )
    changes = config_changes(saved, current)
    listed = ", ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in changes.items())
    if changes and not allow_changes:
        raise UserError(
            f"{path}: the config differs from the checkpoint's in {listed}; pass "
            "trainer.resume_allow_changes=true to resume with the new values, or start a new run"
        )
    if changes:
        log.warning("resuming with changed values (trainer.resume_allow_changes=true): %s", listed)
    return ResumePoint(path, state, changes)


def check_classes(path: Path, saved: list[str] | None, now: list[str]) -> None:
    """Refuse to resume on another class list, saying what differs (``classes 7 -> 3``)."""
    if saved is None or list(saved) == now:
        return
    if len(saved) != len(now):
        what = f"classes {len(saved)} -> {len(now)} ({', '.join(saved)} -> {', '.join(now)})"
    else:
        what = f"class names {', '.join(saved)} -> {', '.join(now)}"
    raise UserError(f"{path}: does not fit this dataset: {what}; resume with the checkpoint's dataset, "
                    "or start a new run in another hydra.run.dir")


class TrainingRun:
    """Seeded, built and (when resuming) restored in the constructor; ``fit`` trains; ``report``
    sends the outcome to the logger. Under torchrun every rank builds one; only rank 0 writes."""

    def __init__(self, cfg: DictConfig, world: distributed.World, device: torch.device, files: RunFiles,
                 resume_from: Path | None, checked: ResumePoint | None = None) -> None:
        """``checked``: the checkpoint at ``resume_from`` already read and checked (rank 0)."""
        started = time.perf_counter()
        seed_everything(cfg.seed)
        parts = app.build(cfg, device)
        if parts.trainer.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        rank_seed = cfg.seed + 10_000 * world.rank  # own augmentation stream per rank
        if world.rank:
            seed_everything(rank_seed)
        self.parts, self.files, self.world = parts, files, world
        self.logger = app.build_logger(cfg, world.is_main, job_type="train")
        if checked is not None and checked.changes:  # recorded in W&B and the checkpoints
            parts.config["resume_changes"] = {key: {"checkpoint": old, "now": new}
                                              for key, (old, new) in checked.changes.items()}
        self.trainer = Trainer(
            model=parts.model, method=parts.method, optimizer=parts.optimizer, scheduler=parts.scheduler,
            data=parts.data, ctx=parts.ctx, files=files, logger=self.logger, epochs=parts.trainer.epochs,
            seed=rank_seed, config=parts.config, is_main=world.is_main,
            reduce=distributed.all_reduce_sum if world.enabled else None,
            callbacks=app.build_callbacks(parts, files, self.logger, world.is_main), clocked=started,
        )
        run_id = None
        if resume_from is not None:
            state = checked.state if checked is not None else load_checkpoint(resume_from)
            check_classes(resume_from, state.get("class_names"), list(parts.data.class_names))
            try:
                self.trainer.load_state_dict(state)
            except (RuntimeError, KeyError, ValueError) as err:
                raise UserError(f"{resume_from}: does not fit this config ({first_line(err)})") from None
            run_id = state.get("wandb_run_id")
            if world.rank:  # the checkpoint holds rank 0's RNG state; keep this rank's stream its own
                seed_everything(rank_seed + self.trainer.progress.epoch)
            log.info("resuming from %s after epoch %d", resume_from, self.trainer.progress.epoch)
        self.earlier_wall_time_s = self.trainer.progress.wall_time_s  # the invocations before this one
        log.info("run dir %s  device %s  %d train batches/epoch", files.run_dir, device,
                 len(parts.data.train_loader))
        self.logger.start(files.run_dir, parts.config, run_id=run_id)

    def fit(self) -> None:
        """Train the remaining epochs; SIGINT/SIGTERM raise ``StopRequested`` after a checkpoint."""
        epochs = self.parts.trainer.epochs
        if self.epoch >= epochs:  # a finished run resumed: say so rather than nothing
            log.info("nothing to do: %s is already at epoch %d (trainer.epochs=%d); pass a larger trainer.epochs "
                     "to extend it", self.files.run_dir, self.epoch, epochs)
        with StopFlag() as stop:
            self.parts.ctx.stop = distributed.AgreedStopFlag(stop) if self.world.enabled else stop
            self.trainer.fit()

    @property
    def epoch(self) -> int:
        return self.trainer.progress.epoch

    def summary(self, status: str, wall_time_s: float) -> dict[str, Any]:
        progress = self.trainer.progress
        summary = progress.summary(status, wall_time_s, self.earlier_wall_time_s)
        summary["best_per_class_acc"] = dict(zip(self.parts.data.class_names, progress.best_per_class_acc))
        return summary

    def report(self, summary: dict[str, Any], exit_code: int) -> None:
        """The outcome to the logger (best figures, confusion matrix, best.pt); always closes it."""
        progress, logger = self.trainer.progress, self.logger
        try:
            logger.log_summary({k: v for k, v in summary.items() if not isinstance(v, dict)})
            if progress.best_confusion:
                logger.log_evaluation(progress.best_per_class_acc, torch.tensor(progress.best_confusion),
                                      self.parts.data.class_names, prefix="best")
            if exit_code == 0 and self.files.best_checkpoint.exists():
                logger.log_file(self.files.best_checkpoint, "model-best", "model")
        finally:
            logger.finish(exit_code)
