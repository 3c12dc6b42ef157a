"""Write a file so that readers see the old version or the new one, whole, never half of it."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator


def _new_file_mode() -> int:
    """The mode ``open()`` gives a new file (0o666 less the umask); mkstemp's own is 0o600."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temp file beside ``path`` for the caller to fill (e.g. a memory map); on success it is
    ``os.replace``d onto ``path``. A crash or kill at any point leaves the previous ``path`` intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _new_file_mode())  # readable like any other output, not owner-only
        os.close(fd)
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_open(path: Path, mode: str = "w") -> Iterator[IO]:
    """:func:`atomic_path` as an open file, fsynced before it replaces ``path``."""
    with atomic_path(path) as tmp, open(tmp, mode) as f:
        yield f
        f.flush()
        os.fsync(f.fileno())
