"""The class-distribution heatmap of each epoch (``plots/class_dist_eNNN.png`` and W&B), drawn on
the writer's thread: a trainer callback."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from adadf.methods.base import Method, Reducer
from adadf.tracking import plots
from adadf.tracking.callbacks import Callback
from adadf.tracking.loggers import Logger
from adadf.tracking.samples import PLOTS_DIR, pictures_due
from adadf.tracking.writer import BackgroundWriter


class ClassDistributionPictures(Callback):
    """The C x C matrix the method uses (``Method.class_distributions``), every ``plots_every``
    epochs and after the last (rank 0; nothing for a method without one)."""

    def __init__(self, method: Method, class_names: Sequence[str], run_dir: Path, logger: Logger,
                 writer: BackgroundWriter, *, epochs: int, plots_every: int = 1, is_main: bool = True) -> None:
        self.method, self.class_names, self.logger, self.writer = method, list(class_names), logger, writer
        self.run_dir = Path(run_dir)
        self.epochs, self.plots_every, self.is_main = epochs, plots_every, is_main

    def end_epoch(self, epoch: int, reduce: Reducer | None = None) -> dict[str, Any]:
        if not self.is_main or not pictures_due(epoch, self.plots_every, self.epochs):
            return {}
        matrix = self.method.class_distributions()
        if matrix is not None:  # a copy: the method updates its own in the next epoch
            matrix = np.array(matrix.detach().cpu().numpy(), dtype=float)
            self.writer.submit(f"the class-distribution heatmap of epoch {epoch}", self._draw, matrix, epoch)
        return {}

    def _draw(self, matrix: np.ndarray, epoch: int) -> None:
        path = plots.class_distribution_heatmap(matrix, self.class_names,
                                                self.run_dir / PLOTS_DIR / f"class_dist_e{epoch:03d}.png",
                                                title=f"class distributions after epoch {epoch}")
        self.logger.log_image("class_distributions", path, epoch)
