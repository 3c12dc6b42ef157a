"""A dataset split as a list of files and labels: what readers produce and pipelines consume."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class ImageIndex:
    """One split: ``paths`` relative to ``root`` (so an index survives moving the dataset)."""

    root: Path
    paths: list[str]
    labels: list[int]
    class_names: list[str]

    def __len__(self) -> int:
        return len(self.paths)

    def absolute(self, i: int) -> Path:
        return self.root / self.paths[i]

    def class_counts(self) -> list[int]:
        counts = [0] * len(self.class_names)
        for label in self.labels:
            counts[label] += 1
        return counts
