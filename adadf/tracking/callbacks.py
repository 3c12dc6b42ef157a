"""The trainer's seam for reports: what is not training (per-sample scores, pictures, CSVs) subscribes
to the epoch loop's events here, so ``Trainer.fit`` holds none of it.

The interface lives with the reports rather than in ``adadf.engine`` because the reports implement
it and the layers only import downwards: the engine calls it, as it calls ``Logger``.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

import torch

from adadf.errors import first_line
from adadf.methods.base import Outputs, Reducer

log = logging.getLogger(__name__)

# The passes of an epoch a callback may watch, batch by batch.
TRAIN_PASS = "train"  # train_one_epoch: train mode, the step's own forward
CLASS_DIST_PASS = "class_distributions"  # the method's per-epoch pass (eval mode), when it has one

# Called with each batch's (outputs, labels per row [N], number of images B) by a pass.
BatchHook = Callable[[Outputs, torch.Tensor, int], None]


class Callback:
    """Events of one ``Trainer.fit``; every method is a no-op here, so a callback overrides only
    what it needs. Called on every rank (a callback that writes checks for rank 0 itself)."""

    def begin_run(self) -> None:
        """Before the first epoch of this ``fit`` (also when resuming)."""

    def begin_pass(self, kind: str) -> BatchHook | None:
        """A pass of ``kind`` (``TRAIN_PASS``, ``CLASS_DIST_PASS``) starts: a hook for its batches, or None."""
        return None

    def end_epoch(self, epoch: int, reduce: Reducer | None = None) -> dict[str, Any]:
        """After the training and class-distribution passes, before evaluation: the metrics this
        callback adds to the epoch's row. ``reduce`` (DDP) sums a tensor over ranks: every rank
        must call it alike. Anything slow belongs off the training thread (``BackgroundWriter``)."""
        return {}

    def end_run(self, completed: bool) -> None:
        """After the last epoch (``completed``), or on the way out of a failed or stopped ``fit``."""


class CallbackList(Callback):
    """Several callbacks as one, called in their order."""

    def __init__(self, callbacks: Sequence[Callback] = ()) -> None:
        self.callbacks = list(callbacks)

    def begin_run(self) -> None:
        for callback in self.callbacks:
            callback.begin_run()

    def begin_pass(self, kind: str) -> BatchHook | None:
        hooks = [hook for callback in self.callbacks if (hook := callback.begin_pass(kind)) is not None]
        if len(hooks) <= 1:
            return hooks[0] if hooks else None

        def every(outputs: Outputs, labels: torch.Tensor, num_images: int) -> None:
            for hook in hooks:
                hook(outputs, labels, num_images)
        return every

    def end_epoch(self, epoch: int, reduce: Reducer | None = None) -> dict[str, Any]:
        row: dict[str, Any] = {}
        for callback in self.callbacks:
            row |= callback.end_epoch(epoch, reduce)
        return row

    def end_run(self, completed: bool) -> None:
        """Every callback's ``end_run``, even when one fails (a later one may be the writer that
        must be joined). After a completed run the first error is raised; on the way out of a
        failed run it is logged, so it does not hide the error that stopped the run."""
        first: BaseException | None = None
        for callback in self.callbacks:
            try:
                callback.end_run(completed)
            except Exception as err:  # noqa: BLE001 - the others still run; reported below
                if completed and first is None:
                    first = err
                elif not completed:
                    log.warning("%s at the end of the run: %s", type(callback).__name__, first_line(err))
        if first is not None:
            raise first
