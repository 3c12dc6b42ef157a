"""The class-distribution heatmap of each epoch (``plots/class_dist_eNNN.png`` and W&B), drawn on
the writer's thread, and how many classes fell back to the fixed distribution (``class_dist_fallbacks``
in metrics.csv, every epoch): a trainer callback."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from adadf.methods.base import Method, Reducer
from adadf.tracking import plots
from adadf.tracking.callbacks import Callback
from adadf.tracking.loggers import Logger
from adadf.tracking.samples import PLOTS_DIR, pictures_due
from adadf.tracking.writer import BackgroundWriter
from adadf.words import counted

log = logging.getLogger(__name__)


class ClassDistributionPictures(Callback):
    """The C x C matrix the method uses (``Method.class_distributions``), every ``plots_every``
    epochs and after the last (rank 0; nothing for a method without one)."""

    def __init__(self, method: Method, class_names: Sequence[str], run_dir: Path, logger: Logger,
                 writer: BackgroundWriter, *, epochs: int, plots_every: int = 1, is_main: bool = True) -> None:
        self.method, self.class_names, self.logger, self.writer = method, list(class_names), logger, writer
        self.run_dir = Path(run_dir)
        self.epochs, self.plots_every, self.is_main = epochs, plots_every, is_main

    def end_epoch(self, epoch: int, reduce: Reducer | None = None) -> dict[str, Any]:
        """``class_dist_fallbacks`` for the row (every epoch, every rank: the method's state is the
        same on all); the heatmap to the writer (rank 0, when due)."""
        fallback = self._fallback_classes()
        row = {} if fallback is None else {"class_dist_fallbacks": int(fallback.sum())}
        if fallback is not None and fallback.any() and self.is_main:
            log.info("epoch %d: %s on the fixed class distribution (too few confident samples): %s", epoch,
                     counted(int(fallback.sum()), "class", "classes"),
                     ", ".join(name for name, fixed in zip(self.class_names, fallback) if fixed))
        if not self.is_main or not pictures_due(epoch, self.plots_every, self.epochs):
            return row
        matrix = self.method.class_distributions()
        if matrix is not None:  # a copy: the method updates its own in the next epoch
            matrix = np.array(matrix.detach().cpu().numpy(), dtype=float)
            self.writer.submit(f"the class-distribution heatmap of epoch {epoch}", self._draw, matrix, fallback,
                               epoch)
        return row

    def _fallback_classes(self) -> np.ndarray | None:
        """[C] bool: the rows that fell back to the fixed distribution (methods that say: Ada-DF)."""
        fallback_classes = getattr(self.method, "fallback_classes", None)
        fallback = fallback_classes() if fallback_classes is not None else None
        return None if fallback is None else fallback.cpu().numpy()

    def _draw(self, matrix: np.ndarray, fallback: np.ndarray | None, epoch: int) -> None:
        path = plots.class_distribution_heatmap(matrix, self.class_names,
                                                self.run_dir / PLOTS_DIR / f"class_dist_e{epoch:03d}.png",
                                                title=f"class distributions after epoch {epoch}",
                                                fallback=fallback)
        self.logger.log_image("class_distributions", path, epoch)
