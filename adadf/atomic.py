"""Write a file so that readers see the old version or the new one, whole, never half of it."""
from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path
from typing import IO, Iterator

# The temp file beside ``name``: ``.<name>.<mkstemp's 8 random characters>.tmp``.
_TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.[a-z0-9_]{8}\.tmp$")


def _umask() -> int:
    """The process's umask, read without changing it where the OS tells (Linux): setting it to read it
    back would, for a moment, change the mode of files other threads create (the report writer)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _new_file_mode() -> int:
    """The mode ``open()`` gives a new file (0o666 less the umask); mkstemp's own is 0o600."""
    return 0o666 & ~_umask()


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temp file beside ``path`` for the caller to fill (e.g. a memory map); on success it is
    ``os.replace``d onto ``path``. A crash or kill at any point leaves the previous ``path`` intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)  # _TEMP_NAME
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


def stale_temp_files(directory: Path) -> list[Path]:
    """The temp files :func:`atomic_path` left in ``directory`` when its process was killed mid-write
    (``kill -9``, the OOM killer: no cleanup runs). Only call this for a directory no live writer
    uses (a run dir its run has locked)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if _TEMP_NAME.match(p.name) and p.is_file())


def save_image(image, path: Path, quality: int = 95, *, jpeg_fallback: bool = False) -> Path:
    """An atomic PIL save in the format of ``path``'s suffix (the temp file's own suffix says
    nothing); returns the path written. A suffix with no writable format: a ``.jpg`` beside it with
    ``jpeg_fallback``, else one line naming the file."""
    from PIL import Image

    from adadf.errors import UserError

    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if jpeg_fallback and fmt not in ("JPEG", "PNG", "WEBP", "BMP", "TIFF"):
        path, fmt = path.with_suffix(".jpg"), "JPEG"
    if fmt is None:
        raise UserError(f"{path}: no image format for the suffix {path.suffix!r}")
    with atomic_path(path) as tmp:
        image.save(tmp, format=fmt, **({"quality": quality} if fmt in ("JPEG", "WEBP") else {}))
    return path
