"""Convert an adadf checkpoint of the old format (adadf-checkpoint-1) to the current one, once.

    adadf-convert OLD.pt            # in place; the original is kept as OLD.pt.bak
    adadf-convert OLD.pt NEW.pt     # into NEW.pt; OLD.pt is left as it is
    python -m adadf.convert --help

adadf loads every checkpoint with ``weights_only=True`` (tensors and plain values, never code).
Format 1 files held numpy RNG state (and the config's ``LDPass`` enum), which only full unpickling
restores, so adadf refuses them. Running this command is the user's say-so to unpickle the file
once: it does so only when the file holds nothing but those objects (listed from the pickle's
opcodes, without running anything), rewrites them as plain values, writes atomically and checks
that the result loads with ``weights_only=True``.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

from adadf.atomic import atomic_path
from adadf.engine.checkpoint import CHECKPOINT_FORMAT, numpy_rng, plain_data, python_rng, save_atomic
from adadf.errors import UserError
from adadf.torchfile import OLD_FORMAT, describe, holdings, is_adadf_v1, read_torch_file, unsafe_globals


class AlreadyCurrent(UserError):
    """The file is in the current format already: nothing to do (not a failure)."""


def _load_old(path: Path) -> dict:
    """The file's contents: ``weights_only`` when it needs nothing else, full unpickling (announced)
    only when all it needs is what format 1 files hold."""
    if not path.is_file():
        raise UserError(f"{path}: checkpoint file not found")
    names = unsafe_globals(path)
    if names == []:
        return read_torch_file(path)
    if not is_adadf_v1(path, names):
        raise UserError(f"{path}: not an {OLD_FORMAT} file (it holds {holdings(names)}); nothing converted, "
                        "nothing unpickled")
    print(f"adadf-convert: loading {path} with weights_only=False (full unpickling) because you asked; "
          f"it holds only {', '.join(names)}, as {OLD_FORMAT} files do", file=sys.stderr)
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - a bad file from the user
        raise UserError(f"{path}: cannot read checkpoint: {describe(err)}") from None


def upgrade(state: dict, path: Path) -> dict:
    """A format 1 checkpoint as format 2: RNG state and every other value as plain data (the
    model's state dict is kept as is)."""
    if not isinstance(state, dict) or "model" not in state or "epoch" not in state:
        raise UserError(f"{path}: not an adadf checkpoint (expected keys 'model' and 'epoch'); nothing converted")
    if state.get("format") == CHECKPOINT_FORMAT:
        raise AlreadyCurrent(f"{path}: already {CHECKPOINT_FORMAT}; nothing to convert")
    if state.get("format", OLD_FORMAT) != OLD_FORMAT:
        raise UserError(f"{path}: format {state['format']}, expected {OLD_FORMAT}; nothing converted")
    new: dict[str, Any] = {**state, "format": CHECKPOINT_FORMAT}
    if "rng" in state:  # last.pt; best.pt holds none
        rng = state["rng"]
        new["rng"] = {**rng, "python": python_rng(rng["python"]), "numpy": numpy_rng(rng["numpy"])}
    return {key: value if key == "model" else plain_data(value) for key, value in new.items()}


def _write(state: dict, source: Path, target: Path) -> Path | None:
    """``state`` to ``target`` atomically; in place (``target == source``) the original is first
    copied to ``<name>.bak`` (returned), which must not exist yet."""
    backup = None
    if target == source:
        backup = source.with_name(source.name + ".bak")
        if backup.exists():
            raise UserError(f"{backup} exists: move it away, or write elsewhere: adadf-convert {source} NEW.pt")
        with atomic_path(backup) as tmp:
            shutil.copy2(source, tmp)
    save_atomic(state, target)
    return backup


def convert(source: Path, target: Path | None = None) -> Path | None:
    """Convert ``source`` into ``target`` (default: in place, with a backup, whose path is returned);
    the written file is read back with ``weights_only=True``."""
    source = Path(source).expanduser().resolve()
    target = source if target is None else Path(target).expanduser().resolve()
    state = upgrade(_load_old(source), source)
    backup = _write(state, source, target)
    if read_torch_file(target).get("format") != CHECKPOINT_FORMAT:  # a refusal here is one line too
        raise UserError(f"{target}: written, but does not read back as {CHECKPOINT_FORMAT}")
    return backup


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="adadf-convert",
        description=f"Convert an adadf checkpoint of format {OLD_FORMAT} (numpy RNG state: needs full "
                    f"unpickling) to {CHECKPOINT_FORMAT}, which loads with weights_only=True. The old file is "
                    f"unpickled once, because you ask, and only when it holds nothing but what {OLD_FORMAT} "
                    "files hold.")
    parser.add_argument("old", type=Path, help="the checkpoint to convert (a last.pt or best.pt)")
    parser.add_argument("new", type=Path, nargs="?",
                        help="where to write the result (default: OLD in place, the original kept as OLD.bak)")
    args = parser.parse_args(argv)
    try:
        backup = convert(args.old, args.new)
    except AlreadyCurrent as err:
        print(f"adadf-convert: {err}")
        return 0
    except UserError as err:
        print(f"adadf-convert: {err}", file=sys.stderr)
        return 1
    except OSError as err:  # a read-only dir, a full disk: the files are as they were
        print(f"adadf-convert: {err.filename}: {err.strerror or err}", file=sys.stderr)
        return 1
    target = (args.new or args.old).expanduser().resolve()
    kept = f"; the original is kept as {backup}" if backup else ""
    print(f"adadf-convert: wrote {target} ({CHECKPOINT_FORMAT}, loads with weights_only=True){kept}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
