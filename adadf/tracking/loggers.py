"""Experiment trackers. The trainer talks to this small interface; W&B is one implementation."""
from __future__ import annotations

import functools
import logging
import os
import threading
from pathlib import Path
from typing import Any, Sequence

log = logging.getLogger(__name__)


class Logger:
    """No-op tracker; subclasses send the same calls somewhere."""

    run_id: str | None = None

    def start(self, run_dir: Path, config: dict[str, Any], run_id: str | None = None) -> None:
        """Open the run; ``run_id`` continues an earlier run (resume)."""

    def log_epoch(self, row: dict[str, Any]) -> None:
        """One row of metrics.csv."""

    def log_summary(self, summary: dict[str, Any]) -> None:
        """Best/final figures (summary.json)."""

    def log_evaluation(self, per_class_acc: Sequence[float], confusion: Any, class_names: Sequence[str],
                       prefix: str = "best") -> None:
        """Per-class accuracy and the confusion matrix of one evaluation."""

    def log_file(self, path: Path, name: str, kind: str) -> None:
        """An artifact such as a checkpoint."""

    def log_image(self, name: str, path: Path, epoch: int | None = None) -> None:
        """A picture (PNG already written into the run dir); ``epoch`` places it on the epoch axis."""

    def log_table(self, name: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """A table; cells may be images ([H, W, 3] uint8 arrays)."""

    def finish(self, exit_code: int = 0) -> None:
        """Close the run; always called, also after an error."""


class NullLogger(Logger):
    """``logger=csv`` / ``logger=none``: the run files only."""


def _serialized(method):
    """One call at a time: the trainer logs rows while the report writer's thread logs pictures,
    and a W&B run is not safe to call from two threads at once."""
    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)
    return locked


def wandb_logged_in() -> bool:
    """Whether W&B has an API key here: ``WANDB_API_KEY``, an identity token file, or a ~/.netrc
    (``NETRC``) entry for its host (``WANDB_BASE_URL``, else wandb's default), the places ``wandb
    login`` reads and writes. Read directly, without prompting, starting W&B's service or asking the
    server (``wandb.login`` can wait minutes on a machine that cannot reach it): ``logger.mode=online``
    is refused before any work without one."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    import netrc
    from urllib.parse import urlparse

    import wandb

    host = urlparse(os.environ.get("WANDB_BASE_URL") or str(wandb.Settings().base_url)).hostname
    path = Path(os.environ.get("NETRC") or Path.home() / ".netrc").expanduser()
    try:
        entry = netrc.netrc(str(path)).authenticators(host or "")
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(entry and entry[2])


class WandbLogger(Logger):
    """Weights & Biases through the real ``wandb`` library.

    Offline by default: the run is written under ``<run_dir>/wandb`` and can be uploaded later
    with ``wandb sync``. ``mode=online`` needs a server and a login; ``disabled`` makes every call
    a no-op inside wandb itself.
    """

    def __init__(
        self,
        mode: str = "offline",
        project: str = "adadf",
        entity: str | None = None,
        group: str | None = None,
        tags: Sequence[str] = (),
        name: str | None = None,
        job_type: str | None = "train",
        log_checkpoint: bool = False,
    ) -> None:
        if mode not in ("offline", "online", "disabled"):
            from adadf.errors import UserError

            raise UserError(f"logger.mode={mode!r}: expected offline, online or disabled")
        self.mode = mode
        self.project = project
        self.entity = entity
        self.group = group
        self.tags = list(tags)
        self.name = name
        self.job_type = job_type
        self.log_checkpoint = log_checkpoint
        self._run = None
        self._staging: str | None = None
        self._lock = threading.RLock()

    @_serialized
    def start(self, run_dir: Path, config: dict[str, Any], run_id: str | None = None) -> None:
        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")
        # Offline, W&B stages artifact files (a table's images, best.pt) under ~/.local/share/wandb
        # until a sync: keep them in the run dir instead, so a run is whole in one place and
        # `wandb sync` finds them (unless the user chose WANDB_DATA_DIR).
        self._staging = None
        if self.mode == "offline" and "WANDB_DATA_DIR" not in os.environ:
            os.environ["WANDB_DATA_DIR"] = self._staging = str(run_dir / "wandb")
        self._run = wandb.init(
            project=self.project,
            entity=self.entity,
            group=self.group,
            tags=self.tags or None,
            name=self.name,
            job_type=self.job_type,
            config=config,
            dir=str(run_dir),
            mode=self.mode,
            id=run_id,
            resume="allow" if run_id else None,
            settings=wandb.Settings(console="off", x_disable_stats=True),
        )
        self.run_id = self._run.id
        self._run.define_metric("epoch")
        self._run.define_metric("*", step_metric="epoch")
        log.info("W&B run %s (%s) in %s", self._run.id, self.mode, run_dir / "wandb")

    @_serialized
    def log_epoch(self, row: dict[str, Any]) -> None:
        if self._run is not None:
            self._run.log(dict(row))

    @_serialized
    def log_summary(self, summary: dict[str, Any]) -> None:
        if self._run is not None:
            for key, value in summary.items():
                self._run.summary[key] = value

    @_serialized
    def log_evaluation(self, per_class_acc, confusion, class_names, prefix: str = "best") -> None:
        if self._run is None:
            return
        import wandb

        table = wandb.Table(columns=["class", "accuracy"],
                            data=[[n, float(a)] for n, a in zip(class_names, per_class_acc)])
        # W&B's confusion-matrix plot wants per-sample labels; rebuild them from the counts.
        y_true, y_pred = [], []
        counts = confusion.tolist()
        for i, row in enumerate(counts):
            for j, n in enumerate(row):
                y_true += [i] * int(n)
                y_pred += [j] * int(n)
        self._run.log({
            f"{prefix}/per_class_acc": wandb.plot.bar(table, "class", "accuracy", title=f"{prefix} per-class accuracy"),
            f"{prefix}/confusion_matrix": wandb.plot.confusion_matrix(
                y_true=y_true, preds=y_pred, class_names=list(class_names), title=f"{prefix} confusion matrix"),
        })
        for name, acc in zip(class_names, per_class_acc):
            self._run.summary[f"{prefix}/acc_{name}"] = float(acc)

    @_serialized
    def log_file(self, path: Path, name: str, kind: str) -> None:
        if self._run is None or not (self.log_checkpoint or kind != "model"):
            return
        import wandb

        artifact = wandb.Artifact(name, type=kind)
        # best.pt is final when logged (the run's end) and large: referenced in place, not copied.
        artifact.add_file(str(path), policy="immutable" if kind == "model" else "mutable")
        self._run.log_artifact(artifact)

    @_serialized
    def log_image(self, name: str, path: Path, epoch: int | None = None) -> None:
        if self._run is None:
            return
        import wandb

        self._run.log({name: wandb.Image(str(path)), **({"epoch": epoch} if epoch is not None else {})})

    @_serialized
    def log_table(self, name: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        if self._run is None:
            return
        import numpy as np
        import wandb

        def cell(value: Any) -> Any:
            if isinstance(value, np.ndarray) and value.ndim == 3:
                return wandb.Image(value)
            return value.item() if isinstance(value, np.generic) else value

        self._run.log({name: wandb.Table(columns=list(columns), data=[[cell(v) for v in row] for row in rows])})

    @_serialized
    def finish(self, exit_code: int = 0) -> None:
        if self._run is not None:
            self._run.finish(exit_code=exit_code)
            self._run = None
        if self._staging is not None and os.environ.get("WANDB_DATA_DIR") == self._staging:
            del os.environ["WANDB_DATA_DIR"]  # the next run in this process stages in its own dir
        self._staging = None
