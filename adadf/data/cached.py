"""A decoded image cache as a dataset: one ``uint8 [N, S, S, 3]`` .npy file, read through a memory map.

Its own module so that both the pipelines that build caches (:mod:`adadf.data.fast`) and the resident
loader that holds them whole (:mod:`adadf.data.resident`) can name it without importing each other.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset


class CachedImageDataset(Dataset):
    """Items ``(uint8 [3, S, S], label)`` from a cache file; ``augment`` (PIL -> PIL) per image.

    The memory map is opened lazily in each process, so pickling the dataset to a DataLoader worker
    sends only the path.
    """

    def __init__(self, path: Path, labels: list[int], augment: Callable | None = None) -> None:
        self.path = Path(path)
        self.labels = list(labels)
        self.augment = augment
        self._pixels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_pixels": None}

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if self._pixels is None:
            self._pixels = np.load(self.path, mmap_mode="r")
        pixels = self._pixels[i]  # [S, S, 3] view of the memory map
        if self.augment is not None:
            pixels = np.array(self.augment(Image.fromarray(pixels)))  # own, writable copy
        else:
            pixels = np.array(pixels)  # own, writable copy
        return torch.from_numpy(pixels).permute(2, 0, 1), self.labels[i]  # [3, S, S]
