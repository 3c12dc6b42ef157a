"""A training run: its parts built from the config, resumed if asked, fitted, reported.

``adadf.task.run_task`` owns the outcome (status, summary.json, exit code); this module owns the
work. ``claim_run_dir`` runs first and refuses before anything is written.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from adadf import app
from adadf.engine import distributed
from adadf.engine.checkpoint import load_checkpoint, seed_everything
from adadf.engine.interrupt import StopFlag
from adadf.engine.trainer import Trainer
from adadf.errors import UserError
from adadf.tracking import RunFiles

log = logging.getLogger(__name__)


class RunInterrupted(UserError):
    """SIGINT/SIGTERM stopped the run; the last completed epoch's checkpoint is kept."""


def find_resume_checkpoint(resume: str | None, files: RunFiles) -> Path | None:
    """``trainer.resume``: null (refuse to overwrite), auto (this run dir), or a file/run dir."""
    if resume is None:
        if files.last_checkpoint.exists():
            raise UserError(
                f"{files.last_checkpoint} exists: pass trainer.resume=auto to continue that run, "
                "or choose another hydra.run.dir"
            )
        return None
    if resume == "auto":
        return files.last_checkpoint if files.last_checkpoint.exists() else None
    path = Path(resume).expanduser().resolve()
    if path.is_dir():
        candidates = [path / "checkpoints" / "last.pt", path / "last.pt"]
        path = next((c for c in candidates if c.is_file()), candidates[0])
    if not path.is_file():
        raise UserError(f"trainer.resume={resume}: no checkpoint at {path}")
    return path


class TrainingRun:
    """Seeded, built and (when resuming) restored in the constructor; ``fit`` trains; ``report``
    sends the outcome to the logger. Under torchrun every rank builds one; only rank 0 writes."""

    def __init__(self, cfg: DictConfig, world: distributed.World, device: torch.device, files: RunFiles,
                 resume_from: Path | None) -> None:
        seed_everything(cfg.seed)
        parts = app.build(cfg, device)
        if parts.trainer.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        rank_seed = cfg.seed + 10_000 * world.rank  # own augmentation stream per rank
        if world.rank:
            seed_everything(rank_seed)
        self.parts, self.files, self.world = parts, files, world
        self.logger = app.build_logger(cfg, world.is_main, job_type="train")
        self.trainer = Trainer(
            model=parts.model, method=parts.method, optimizer=parts.optimizer, scheduler=parts.scheduler,
            data=parts.data, ctx=parts.ctx, files=files, logger=self.logger, epochs=parts.trainer.epochs,
            seed=rank_seed, config=parts.config, is_main=world.is_main,
            reduce=distributed.all_reduce_sum if world.enabled else None,
            suspects_by=parts.trainer.suspects_by, suspects=parts.trainer.suspects,
        )
        run_id = None
        if resume_from is not None:
            state = load_checkpoint(resume_from)
            try:
                self.trainer.load_state_dict(state)
            except (RuntimeError, KeyError, ValueError) as err:
                raise UserError(f"{resume_from}: does not fit this config ({str(err).splitlines()[0]})") from None
            run_id = state.get("wandb_run_id")
            if world.rank:  # the checkpoint holds rank 0's RNG state; keep this rank's stream its own
                seed_everything(rank_seed + self.trainer.progress.epoch)
            log.info("resuming from %s after epoch %d", resume_from, self.trainer.progress.epoch)
        log.info("run dir %s  device %s  %d train batches/epoch", files.run_dir, device,
                 len(parts.data.train_loader))
        self.logger.start(files.run_dir, parts.config, run_id=run_id)

    def fit(self) -> None:
        """Train the remaining epochs; SIGINT/SIGTERM raise ``StopRequested`` after a checkpoint."""
        with StopFlag() as stop:
            self.parts.ctx.stop = distributed.AgreedStopFlag(stop) if self.world.enabled else stop
            self.trainer.fit()

    @property
    def epoch(self) -> int:
        return self.trainer.progress.epoch

    def summary(self, status: str, wall_time_s: float) -> dict[str, Any]:
        progress = self.trainer.progress
        summary = progress.summary(status, wall_time_s)
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
