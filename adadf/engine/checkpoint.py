"""Checkpoints that survive crashes: written to a temp file, fsynced, then atomically renamed."""
from __future__ import annotations

import contextlib
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adadf.atomic import atomic_path
from adadf.errors import UserError
from adadf.torchfile import UnreadableCheckpoint, read_torch_file


class CheckpointWriteError(UserError, OSError):
    """A checkpoint could not be written (a full disk, a read-only location); the previous files
    are intact. An ``OSError`` too, with the original ``errno``."""

    def __init__(self, message: str, errno_: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno_


def save_all_atomic(files: dict[Path, Any]) -> None:
    """``torch.save`` each object to its path as one step: every file is written to a temp file and
    fsynced first, and only then are they renamed into place. So a failure while writing any of
    them (a full disk) leaves every previous file as it was. An ``OSError`` names the file."""
    with contextlib.ExitStack() as stack:  # on exit: renamed in reverse order, or all temps removed
        for path, obj in files.items():
            tmp = stack.enter_context(atomic_path(path))
            try:
                with open(tmp, "wb") as f:
                    torch.save(obj, f)
                    f.flush()
                    os.fsync(f.fileno())
            except OSError as err:
                if err.filename is None:  # a write to an open file names none
                    raise OSError(err.errno, err.strerror or str(err), str(path)) from err
                raise


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` to ``path`` so that a reader sees either the old file or the new one, whole."""
    save_all_atomic({Path(path): obj})


def _fallback(path: Path) -> str:
    """For an unreadable ``last.pt``: what its run dir still offers (an intact ``best.pt``)."""
    best = path.with_name("best.pt")
    if path.name != "last.pt" or not best.is_file():
        return "no best.pt beside it to fall back to"
    try:
        epoch = read_torch_file(best, trusted=True)["epoch"]
    except (UserError, KeyError):  # any failure means best.pt is no fallback
        return f"{best} is unreadable too"
    return (f"{best} (epoch {epoch}) is intact: it holds weights only, so start a new run from it with "
            f"backbone.checkpoint={best}")


def load_checkpoint(path: Path) -> dict:
    """Load an adadf training checkpoint (a file adadf wrote), or fail with one line naming the file
    and, for an unreadable last.pt, what its run dir still offers."""
    try:
        state = read_torch_file(path, trusted=True)
    except UnreadableCheckpoint as err:
        raise UserError(f"{err}; {_fallback(Path(path))}") from None
    if "model" not in state or "epoch" not in state:
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
