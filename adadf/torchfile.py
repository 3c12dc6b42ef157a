"""The one reader of checkpoint files: every failure is a one-line UserError naming the file.

Every file is loaded with ``weights_only=True``: tensors, plain containers, numbers and strings,
never code. adadf's own checkpoints (format ``adadf-checkpoint-2``) hold nothing else. A file that
needs full unpickling is refused, its Python objects listed without running anything; only an
explicit opt-in (``allow_pickle``, for a third-party file the user trusts) loads it fully, since
unpickling runs any code the file contains.
"""
from __future__ import annotations

import logging
import pickle
import re
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

from adadf.errors import UserError, first_line

log = logging.getLogger(__name__)

# What an adadf checkpoint of format adadf-checkpoint-1 needs beyond weights_only: numpy RNG state
# (and numpy scalars in the metrics history; numpy 1.x names too) and the config's LDPass enum.
ADADF_V1_GLOBALS = frozenset({
    "numpy.ndarray", "numpy.dtype",
    "numpy._core.multiarray._reconstruct", "numpy.core.multiarray._reconstruct",
    "numpy._core.multiarray.scalar", "numpy.core.multiarray.scalar",
    "adadf.config.schema.LDPass",
})
CONVERTER = "adadf-convert"  # the console script of adadf.convert
OLD_FORMAT = "adadf-checkpoint-1"


class UnreadableCheckpoint(UserError):
    """The file exists but does not decode: truncated, corrupt or not a PyTorch file."""


class NeedsPickle(UserError):
    """The file holds Python objects that only full unpickling (which can run code) restores."""


def describe(err: BaseException, limit: int = 160) -> str:
    """``Type: first line of the message`` for a one-line error about a file."""
    return f"{type(err).__name__}: {first_line(err, 'no detail', limit)}"


def unsafe_globals(path: Path, err: BaseException | None = None) -> list[str] | None:
    """The Python objects (``module.name``) ``path`` needs beyond ``weights_only``, read from the
    pickle's opcodes without executing them; from ``err`` (torch names the first) when the file
    cannot be listed (a pre-1.6 file, an unusual pickle); None when neither says."""
    try:
        return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # noqa: BLE001 - unlisted: the load error may still name one
        found = re.search(r"GLOBAL (\S+) was not an allowed global", str(err or ""))
        return [found.group(1)] if found else None


def _pickle_mentions(path: Path, text: bytes) -> bool:
    """Whether the pickle inside torch.save file ``path`` holds ``text`` (read as bytes, not unpickled)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(text in archive.read(name) for name in archive.namelist() if name.endswith("/data.pkl"))
    except (zipfile.BadZipFile, OSError):
        return False


def is_adadf_v1(path: Path, names: list[str] | None) -> bool:
    """Whether ``path``, which needs ``names``, is an adadf-checkpoint-1 file: it needs nothing but
    what those files hold (ADADF_V1_GLOBALS) and its pickle has their format string."""
    return bool(names) and set(names) <= ADADF_V1_GLOBALS and _pickle_mentions(path, OLD_FORMAT.encode())


def listed(items: Iterable[str], limit: int = 3) -> str:
    """The first ``limit`` items and how many more: one line, however many there are."""
    items = list(items)
    shown = ", ".join(items[:limit])
    return f"{shown} (+{len(items) - limit} more)" if len(items) > limit else shown


def holdings(names: list[str] | None) -> str:
    """What a file holds beyond weights_only, for a message (:func:`unsafe_globals`'s result)."""
    return listed(names, 4) if names else "Python objects that cannot be listed without running them"


def refusal(path: Path, names: list[str] | None, opt_in: str | None) -> str:
    """The one line for a file ``weights_only`` loading refuses: what it needs and the way out."""
    if is_adadf_v1(path, names):
        return (f"{path}: an adadf checkpoint of the old format {OLD_FORMAT} (numpy RNG state), which "
                f"loads only by full unpickling; convert it once with `{CONVERTER} {path}`")
    needs = (f"{path}: refused: it holds {holdings(names)}, which only full unpickling (weights_only=False) "
             "loads, and that runs any code the file contains")
    if opt_in is None:
        return f"{needs}; expected a checkpoint adadf wrote (tensors and plain values only)"
    return f"{needs}; only for a file you trust, pass {opt_in}"


def _load(path: Path, allow_pickle: bool, opt_in: str | None) -> object:
    """``torch.load`` with ``weights_only=True``; full unpickling only when ``allow_pickle``."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        names = unsafe_globals(path, err)
        # A torch.save file (a zip) that weights_only refuses holds Python objects; any other file
        # it refuses without naming one is not a checkpoint (the caller reports it unreadable).
        if "weights only" not in str(err).lower() or not (names or zipfile.is_zipfile(path)):
            raise
        if not allow_pickle:
            raise NeedsPickle(refusal(path, names, opt_in)) from None
    log.info("%s: loading with weights_only=False (full unpickling), as %s asks", path, opt_in or "allow_pickle")
    return torch.load(path, map_location="cpu", weights_only=False)


def read_torch_file(path: str | Path, *, allow_pickle: bool = False, opt_in: str | None = None) -> dict:
    """``torch.load`` ``path`` onto the CPU; the contents must be a dict (state dict or checkpoint).

    ``opt_in`` is the setting a refusal names (``backbone.allow_pickle=true``); None where there is
    none (resuming: only adadf's own files).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"{path}: checkpoint file not found")
    if not path.is_file():
        raise UserError(f"{path}: expected a checkpoint file, found a directory or special file")
    try:
        obj = _load(path, allow_pickle, opt_in)
    except NeedsPickle:
        raise
    except Exception as err:  # noqa: BLE001 - any decoding failure is a bad file from the user
        raise UnreadableCheckpoint(
            f"{path}: cannot read checkpoint (truncated, corrupt or not a PyTorch file): {describe(err)}"
        ) from None
    if not isinstance(obj, Mapping):
        raise UserError(f"{path}: expected a dict (a state dict or a checkpoint), got {type(obj).__name__}")
    return dict(obj)
