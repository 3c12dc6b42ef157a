"""Checkpoints that survive crashes: written to a temp file, fsynced, then atomically renamed."""
from __future__ import annotations

import contextlib
import errno
import os
import random
import shutil
import signal
import threading
from collections.abc import Iterator
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adadf.atomic import atomic_path
from adadf.errors import UserError
from adadf.torchfile import CONVERTER, UnreadableCheckpoint, describe, read_torch_file

# What Trainer.state_dict writes: loads with weights_only=True (1: numpy RNG state, needs unpickling).
CHECKPOINT_FORMAT = "adadf-checkpoint-2"

# Less free space than this after a failed checkpoint write: the disk was full.
FULL_DISK_BYTES = 64 * 2**20


class CheckpointWriteError(UserError, OSError):
    """A checkpoint could not be written (a full disk, a read-only location); the previous files
    are intact. An ``OSError`` too, with the original ``errno``."""

    def __init__(self, message: str, errno_: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno_


def save_all_atomic(files: dict[Path, Any]) -> None:
    """``torch.save`` each object to its path as one step: every file is written to a temp file and
    fsynced first, and only then are they renamed into place, with SIGINT/SIGTERM held back until
    the last rename is done. So a failure while writing any of them (a full disk, a second Ctrl-C)
    leaves every previous file as it was, and the files of one step are never half replaced.
    Any write failure is an ``OSError`` naming the file."""
    with contextlib.ExitStack() as signals:
        with contextlib.ExitStack() as stack:  # on exit: renamed in reverse order, or all temps removed
            for path, obj in files.items():
                tmp = stack.enter_context(atomic_path(path))
                try:
                    with open(tmp, "wb") as f:
                        torch.save(obj, f)
                        f.flush()
                        os.fsync(f.fileno())
                except Exception as err:  # noqa: BLE001 - torch's writer raises RuntimeError too
                    raise write_error(err, Path(path)) from err
            signals.enter_context(signals_held())  # released after the renames (the inner exit)


def write_error(err: Exception, path: Path) -> OSError:
    """``err`` from writing ``path`` as an ``OSError`` that names it. PyTorch's zip writer reports a
    full disk as ``RuntimeError: [enforce fail at inline_container.cc] ... unexpected pos``, with no
    errno: when the file's filesystem is (nearly) full that is what it means."""
    if isinstance(err, OSError):
        return err if err.filename is not None else OSError(err.errno, err.strerror or str(err), str(path))
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    if free is not None and free < FULL_DISK_BYTES:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    return OSError(errno.EIO, describe(err), str(path))


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Hold SIGINT/SIGTERM back (delivered when the block ends) where the platform allows."""
    held = {signal.SIGINT, signal.SIGTERM}
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` to ``path`` so that a reader sees either the old file or the new one, whole."""
    save_all_atomic({Path(path): obj})


def _fallback(path: Path) -> str:
    """For an unreadable ``last.pt``: what its run dir still offers (an intact ``best.pt``)."""
    best = path.with_name("best.pt")
    if path.name != "last.pt" or not best.is_file():
        return "no best.pt beside it to fall back to"
    try:
        epoch = read_torch_file(best)["epoch"]
    except (UserError, KeyError):  # any failure means best.pt is no fallback
        return f"{best} is unreadable too"
    return (f"{best} (epoch {epoch}) is intact: it holds weights only, so start a new run from it with "
            f"backbone.checkpoint={best}")


def load_checkpoint(path: Path) -> dict:
    """Load an adadf training checkpoint (a file adadf wrote, ``weights_only``: no opt-in, a file
    that needs unpickling is refused), or fail with one line naming the file and, for an unreadable
    last.pt, what its run dir still offers; an older format names the converter."""
    try:
        state = read_torch_file(path)
    except UnreadableCheckpoint as err:
        raise UserError(f"{err}; {_fallback(Path(path))}") from None
    if "model" not in state or "epoch" not in state:
        raise UserError(f"{path}: not an adadf training checkpoint (expected keys 'model' and 'epoch')")
    if state.get("format", CHECKPOINT_FORMAT) != CHECKPOINT_FORMAT:
        raise UserError(f"{path}: an adadf checkpoint of format {state['format']}, expected {CHECKPOINT_FORMAT}; "
                        f"convert it once with `{CONVERTER} {path}`")
    return state


def plain_data(obj: Any) -> Any:
    """``obj`` with enums as their values and numpy scalars as Python numbers, so that it loads with
    ``weights_only=True`` (the config's ``LDPass``; AUROCs computed with numpy in the history)."""
    if isinstance(obj, Enum):
        return obj.value
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {key: plain_data(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(plain_data(value) for value in obj)
    return obj


def python_rng(state: tuple) -> dict:
    """``random.getstate()`` as plain values: (version, 625 ints, gauss_next)."""
    version, internal, gauss_next = state
    return {"version": version, "state": list(internal), "gauss_next": gauss_next}


def numpy_rng(state: tuple) -> dict:
    """``np.random.get_state()`` (legacy tuple: name, uint32 key[624], pos, has_gauss, gauss) as plain
    values; the key as a list of ints, which holds uint32 exactly."""
    name, key, pos, has_gauss, gauss = state
    return {"name": name, "key": [int(k) for k in key], "pos": int(pos), "has_gauss": int(has_gauss),
            "gauss": float(gauss)}


def rng_state() -> dict:
    """Every RNG's state as tensors and plain values (``weights_only`` loads them; JSON-compatible
    apart from the torch/CUDA byte tensors), restored bit-exactly by :func:`set_rng_state`."""
    state = {
        "python": python_rng(random.getstate()),
        "numpy": numpy_rng(np.random.get_state()),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore :func:`rng_state`'s result."""
    py, npy = state["python"], state["numpy"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))
    np.random.set_state((npy["name"], np.array(npy["key"], dtype=np.uint32), npy["pos"], npy["has_gauss"],
                         npy["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
