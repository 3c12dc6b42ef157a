"""Checkpoints that survive crashes: written to a temp file, fsynced, then atomically renamed."""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adadf.atomic import atomic_open
from adadf.errors import UserError


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` to ``path`` so that a reader sees either the old file or the new one, whole."""
    with atomic_open(path, "wb") as f:
        torch.save(obj, f)


def load_checkpoint(path: Path) -> dict:
    """Load an adadf training checkpoint, or fail with one line naming the file."""
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # truncated, corrupt, or not a torch file
        raise UserError(f"{path}: unreadable checkpoint ({type(err).__name__}); expected a file written by adadf") from None
    if not isinstance(state, dict) or "model" not in state or "epoch" not in state:
        raise UserError(f"{path}: not an adadf training checkpoint (expected keys 'model' and 'epoch')")
    return state


def rng_state() -> dict:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
