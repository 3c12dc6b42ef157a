"""The one reader of checkpoint files: every failure is a one-line UserError naming the file.

Two safety rules, chosen by the caller: a file adadf wrote itself (``trusted``: a run's last.pt /
best.pt, which hold RNG state that ``weights_only`` loading rejects) is unpickled as is; any other
file (a pretrained backbone, an original Ada-DF checkpoint) is loaded with ``weights_only=True``
first and only retried without it, with a warning, when it needs Python objects.
"""
from __future__ import annotations

import logging
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch

from adadf.errors import UserError, first_line

log = logging.getLogger(__name__)


class UnreadableCheckpoint(UserError):
    """The file exists but does not decode: truncated, corrupt or not a PyTorch file."""


def describe(err: BaseException, limit: int = 160) -> str:
    """``Type: first line of the message`` for a one-line error about a file."""
    return f"{type(err).__name__}: {first_line(err, 'no detail', limit)}"


def read_torch_file(path: str | Path, *, trusted: bool = False) -> dict:
    """``torch.load`` ``path`` onto the CPU; the contents must be a dict (state dict or checkpoint)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"{path}: checkpoint file not found")
    if not path.is_file():
        raise UserError(f"{path}: expected a checkpoint file, found a directory or special file")
    try:
        if trusted:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        else:
            try:
                obj = torch.load(path, map_location="cpu", weights_only=True)
            except pickle.UnpicklingError as err:
                if "weights only" not in str(err).lower():
                    raise
                log.warning("%s holds non-tensor Python objects; loading it with weights_only=False", path)
                obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - any decoding failure is a bad file from the user
        raise UnreadableCheckpoint(
            f"{path}: cannot read checkpoint (truncated, corrupt or not a PyTorch file): {describe(err)}"
        ) from None
    if not isinstance(obj, Mapping):
        raise UserError(f"{path}: expected a dict (a state dict or a checkpoint), got {type(obj).__name__}")
    return dict(obj)
