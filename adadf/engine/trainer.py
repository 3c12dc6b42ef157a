"""The epoch loop: train -> class distributions -> callbacks -> evaluate -> checkpoint, resumable exactly."""
from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import RandomSampler

from adadf.config.schema import LDPass
from adadf.data.bundle import DataBundle
from adadf.engine.checkpoint import (CHECKPOINT_FORMAT, CheckpointWriteError, plain_data, rng_state,
                                    save_all_atomic, set_rng_state)
from adadf.engine.distributed import broadcast_buffers, check_same_across_ranks, unwrap, unwrap_ddp
from adadf.engine.loop import EvalResult, StepContext, evaluate, observe_pass, train_one_epoch
from adadf.methods.base import Method, Reducer
from adadf.tracking import Logger, RunFiles
from adadf.tracking.callbacks import CLASS_DIST_PASS, TRAIN_PASS, Callback, CallbackList

log = logging.getLogger(__name__)

# best.pt leaves out optimizer/scheduler/RNG state: a third of last.pt's size (Adam keeps 2 moments).
BEST_KEYS = ("format", "model", "method", "epoch", "progress", "config", "class_names", "wandb_run_id")


@dataclass
class Progress:
    """Everything about the run so far that is not a module's state."""

    epoch: int = 0  # last completed epoch
    best_acc: float = -math.inf
    best_epoch: int = 0
    best_mean_class_acc: float = -math.inf
    best_per_class_acc: list[float] = field(default_factory=list)  # at the best test epoch
    best_confusion: list[list[int]] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    wall_time_s: float = 0.0  # every invocation's, up to the last checkpoint (older checkpoints: none, 0)

    def summary(self, status: str, wall_time_s: float, earlier_wall_time_s: float = 0.0) -> dict[str, Any]:
        """``wall_time_s``: this invocation's; ``earlier_wall_time_s``: the resumed checkpoint's."""
        last = self.history[-1] if self.history else {}
        summary = {
            "best_acc": self.best_acc if self.history else None,  # reference metric: best test epoch
            "best_epoch": self.best_epoch if self.history else None,
            "final_acc": last.get("test_acc"),
            "best_mean_class_acc": self.best_mean_class_acc if self.history else None,
            "final_mean_class_acc": last.get("test_mean_class_acc"),
            "epochs_completed": self.epoch,
            "status": status,
            "wall_time_s": earlier_wall_time_s + wall_time_s,  # the run's, resumed invocations included
            "wall_time_this_run_s": wall_time_s,
        }
        # label noise: every detector's AUROC (noise_auroc, noise_auroc_<score>), last epoch
        summary |= {key: value for key, value in last.items() if key.startswith("noise_auroc")}
        if "val_acc" in last:  # honest protocol: test accuracy at the best-validation epoch
            best_val = max(self.history, key=lambda r: r["val_acc"])
            summary.update(best_val_acc=best_val["val_acc"], best_val_epoch=best_val["epoch"],
                           test_acc_at_best_val=best_val["test_acc"])
        return summary


def _file_id(path: Path) -> tuple[int, int] | None:
    """(device, inode) of ``path``: an atomic replace gives the file a new inode."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _reseed(loader: Any, seed: int, epoch: int, salt: int) -> None:
    """Make each epoch's shuffle a function of (seed, epoch) so a resumed run draws the same order."""
    sampler = getattr(loader, "sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch * 2 + salt)
    if isinstance(sampler, RandomSampler):
        # Its own stream: the loader's generator also seeds workers, but only when a (persistent)
        # worker iterator is created, so sharing it made the order depend on the run's history.
        sampler.generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch * 2 + salt)
    generator = getattr(loader, "generator", None)
    if generator is not None:
        generator.manual_seed(seed * 1_000_003 + epoch * 2 + salt)


@dataclass
class Trainer:
    model: nn.Module
    method: Method
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    data: DataBundle
    ctx: StepContext
    files: RunFiles
    logger: Logger
    epochs: int
    seed: int = 0
    config: dict[str, Any] = field(default_factory=dict)
    is_main: bool = True
    reduce: Reducer | None = None
    progress: Progress = field(default_factory=Progress)
    # Reports that subscribe to the loop's events (per-sample scores, pictures; adadf.tracking),
    # called in this order; built by the composition root.
    callbacks: list[Callback] = field(default_factory=list)
    clocked: float = field(default_factory=time.perf_counter)  # when progress.wall_time_s was last updated

    # -- checkpoints -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything resume needs, as tensors and plain values only: it loads with ``weights_only=True``."""
        return {
            "format": CHECKPOINT_FORMAT,
            "model": unwrap(self.model).state_dict(),  # kept as is: torch's version _metadata rides along
            **plain_data({
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.ctx.scaler.state_dict(),
                "method": self.method.state_dict(),
                "epoch": self.progress.epoch,
                "progress": vars(self.progress),
                "config": self.config,
                "class_names": self.data.class_names,
                "wandb_run_id": self.logger.run_id,
            }),
            "rng": rng_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        unwrap(self.model).load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.ctx.scaler.load_state_dict(state["scaler"])
        self.method.load_state_dict(state["method"])
        self.progress = Progress(**state["progress"])
        set_rng_state(state["rng"])

    def _save(self, improved: bool, previous: Progress) -> None:
        """This epoch's last.pt (and best.pt) as one step. If it does not land (a full disk, a
        read-only dir, a second Ctrl-C mid-write), ``progress`` goes back to ``previous``, what the
        files on disk hold, so summary.json and metrics.csv agree with them; a write error is one line."""
        if not self.is_main:
            return
        state = self.state_dict()
        files = {self.files.last_checkpoint: state}
        if improved:  # weights for evaluation and prediction; resume state stays in last.pt only
            files[self.files.best_checkpoint] = {k: state[k] for k in BEST_KEYS}
        before = _file_id(self.files.last_checkpoint)
        try:
            save_all_atomic(files)
        except BaseException as err:
            if _file_id(self.files.last_checkpoint) == before:  # the new files did not land
                self.progress = previous
            if not isinstance(err, OSError):
                raise
            last_good = (f"the last good checkpoint is epoch {self.progress.epoch}" if self.progress.epoch
                         else "no checkpoint was written yet")
            raise CheckpointWriteError(
                f"{err.strerror or err} writing {err.filename}; {last_good}", err.errno
            ) from None

    # -- the loop ----------------------------------------------------------------------------
    def fit(self) -> Progress:
        """Run the remaining epochs; raises on interrupt or failure after the last checkpoint."""
        callbacks = CallbackList(self.callbacks)
        callbacks.begin_run()
        completed = False
        try:
            for epoch in range(self.progress.epoch + 1, self.epochs + 1):
                start = time.perf_counter()
                row: dict[str, Any] = {"epoch": epoch, "lr": self.optimizer.param_groups[0]["lr"]}
                row |= self._train(epoch, callbacks)
                row |= self._class_distributions(epoch, callbacks)
                row |= callbacks.end_epoch(epoch, self.reduce)  # per-sample scores, pictures (adadf.tracking)
                self.scheduler.step()
                scores, test = self._evaluate()
                row |= scores
                row["epoch_time_s"] = time.perf_counter() - start
                self._record(epoch, row, test)
            completed = True
        finally:
            callbacks.end_run(completed)  # the writer's thread is joined here, also on the way out of a failure
        return self.progress

    def _train(self, epoch: int, callbacks: CallbackList) -> dict[str, Any]:
        """The training pass; its batches go to the method (online statistics) and the callbacks."""
        _reseed(self.data.train_loader, self.seed, epoch, 0)
        row = train_one_epoch(
            self.model, self.data.train_loader, self.optimizer, self.method, epoch, self.ctx,
            batch_transform=self.data.train_batch_transform, observe=self.method.observes == LDPass.online,
            reduce=self.reduce, on_batch=callbacks.begin_pass(TRAIN_PASS), order=self.data.train_order,
        )
        broadcast_buffers(unwrap_ddp(self.model))  # DDP: every rank evaluates rank 0's BatchNorm statistics
        return row

    def _class_distributions(self, epoch: int, callbacks: CallbackList) -> dict[str, Any]:
        """The method's per-epoch pass (``observes``: augmented or clean), then its update."""
        data, method, ctx, inner = self.data, self.method, self.ctx, unwrap_ddp(self.model)
        # No-grad passes run on the module inside DDP: no hooks, no collectives, so ranks may see
        # shards of different lengths (evaluation); their results are summed with ``reduce``.
        start = time.perf_counter()
        if method.observes == LDPass.augmented:  # Ada-DF's reference: the training loader as is
            _reseed(data.train_loader, self.seed, epoch, 1)
            observe_pass(inner, data.train_loader, method, ctx, batch_transform=data.train_batch_transform,
                         on_batch=callbacks.begin_pass(CLASS_DIST_PASS))
        elif method.observes == LDPass.clean:
            observe_pass(inner, data.clean_train_loader, method, ctx, batch_transform=data.eval_batch_transform,
                         on_batch=callbacks.begin_pass(CLASS_DIST_PASS))
        method.end_epoch(self.reduce)
        if self.reduce is not None:  # DDP guard: every rank must have learnt the same state
            for key, value in method.state_dict().items():
                if isinstance(value, torch.Tensor):
                    check_same_across_ranks(value.to(ctx.device), f"the method's {key}")
        return {"ld_time_s": time.perf_counter() - start}

    def _evaluate(self) -> tuple[dict[str, float], EvalResult]:
        """Validation (when split off) and test accuracies for the row, and the test result."""
        data, inner, row = self.data, unwrap_ddp(self.model), {}
        if data.val_loader is not None:
            val = evaluate(inner, data.val_loader, data.num_classes, self.ctx,
                           batch_transform=data.eval_batch_transform, desc="val", reduce=self.reduce)
            row |= {"val_acc": val.acc, "val_mean_class_acc": val.mean_class_acc}
        test = evaluate(inner, data.test_loader, data.num_classes, self.ctx,
                        batch_transform=data.eval_batch_transform, reduce=self.reduce)
        return row | {"test_acc": test.acc, "test_mean_class_acc": test.mean_class_acc}, test

    def _record(self, epoch: int, row: dict[str, Any], test: EvalResult) -> None:
        """The epoch into ``progress``, the checkpoints, metrics.csv and the logger, in that order."""
        p = self.progress
        saved = copy.deepcopy(p)  # what the checkpoints on disk hold, until this epoch's are written
        improved = test.acc > p.best_acc
        if improved:
            p.best_acc, p.best_epoch = test.acc, epoch
            p.best_per_class_acc, p.best_confusion = test.per_class_acc, test.confusion.tolist()
        p.best_mean_class_acc = max(p.best_mean_class_acc, test.mean_class_acc)
        p.epoch = epoch
        p.history.append(row)
        now = time.perf_counter()
        p.wall_time_s, self.clocked = p.wall_time_s + now - self.clocked, now
        self._save(improved, saved)
        if self.is_main:
            self.files.write_metrics(p.history)
            self.logger.log_epoch(row)
        log.info(
            "epoch %d/%d  loss %.4f  train %.2f%%  test %.2f%% (best %.2f%% @%d)  %.1fs  %.0f img/s",
            epoch, self.epochs, row["train_loss"], row["train_acc"], test.acc, p.best_acc,
            p.best_epoch, row["epoch_time_s"], row["train_images_per_s"],
        )
