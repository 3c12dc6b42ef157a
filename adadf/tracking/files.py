"""metrics.csv and summary.json: the files users and sweeps read, always written atomically."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from adadf.atomic import atomic_open

METRIC_COLUMNS = [
    "epoch", "lr", "train_loss", "train_acc", "test_acc", "test_mean_class_acc",
    "epoch_time_s", "train_images_per_s",
]


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


class RunFiles:
    """The per-run output contract (docs/runs.md, "What a run writes") inside one run directory."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.checkpoint_dir = self.run_dir / "checkpoints"
        self.last_checkpoint = self.checkpoint_dir / "last.pt"
        self.best_checkpoint = self.checkpoint_dir / "best.pt"
        self.metrics = self.run_dir / "metrics.csv"
        self.summary = self.run_dir / "summary.json"
        self.hydra_dir = self.run_dir / ".hydra"  # the job's composed config, Hydra's settings, overrides

    def write_metrics(self, history: list[dict[str, Any]]) -> None:
        """Rewrite metrics.csv from the full history (so a resumed run never duplicates rows)."""
        frame = pd.DataFrame(history)
        columns = [c for c in METRIC_COLUMNS if c in frame] + [c for c in frame if c not in METRIC_COLUMNS]
        write_text_atomic(self.metrics, frame[columns].to_csv(index=False))

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_text_atomic(self.summary, json.dumps(summary, indent=2, default=float) + "\n")

    def write_hydra_record(self, files: dict[str, str]) -> None:
        """``.hydra/<name>`` for each name -> YAML text (what Hydra writes there itself)."""
        for name, text in files.items():
            write_text_atomic(self.hydra_dir / name, text)

    def run_record(self) -> list[Path]:
        """The files that make this dir a run's record: checkpoints, metrics, a summary of at least one
        epoch (a failed start's summary is no record: a corrected command may reuse its dir)."""
        found = [p for p in (self.last_checkpoint, self.best_checkpoint, self.metrics) if p.exists()]
        summary = self.read_summary() if self.summary.exists() else None
        if summary is not None and (summary.get("epochs_completed") or summary.get("status") == "completed"):
            found.append(self.summary)
        return found

    def read_summary(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.summary.read_text())
        except (OSError, ValueError):
            return None
