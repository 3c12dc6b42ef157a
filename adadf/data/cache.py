"""Where adadf keeps what it derives from data (decoded images, generated data, file listings)."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from adadf.atomic import atomic_open

KINDS = ("synthetic", "images", "listings")


def cache_dir(kind: str) -> Path:
    """``$ADADF_CACHE_DIR/<kind>``, else ``$XDG_CACHE_HOME/adadf/<kind>``, else ``~/.cache/adadf/<kind>``.

    One subfolder per kind (:data:`KINDS`), so every cache can be found, sized or deleted on its own.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown cache kind {kind!r}: expected one of {', '.join(KINDS)}")
    if os.environ.get("ADADF_CACHE_DIR"):
        return Path(os.environ["ADADF_CACHE_DIR"]).expanduser() / kind
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "adadf" / kind
    return Path.home() / ".cache" / "adadf" / kind


def digest_path(path: Path) -> Path:
    """The file beside a cache that holds its SHA-256 (``<name>.sha256``, ``sha256sum`` format)."""
    return path.with_name(path.name + ".sha256")


def file_digest(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()  # ~1 s for RAF-DB's 370 MB


def write_digest(path: Path, digest: str) -> None:
    """Record ``path``'s digest beside it; written after the cache, so a crash between leaves none."""
    with atomic_open(digest_path(path), "w") as f:
        f.write(f"{digest}  {path.name}\n")


def digest_problem(path: Path) -> str | None:
    """Why ``path``'s bytes cannot be trusted (None: they can): no digest beside it, or changed bytes
    (zeroed or flipped, not only truncated: a file format's own checks miss those)."""
    try:
        expected = digest_path(path).read_text().split()[0]
    except (OSError, IndexError) as err:
        return f"without its digest {digest_path(path).name} ({type(err).__name__})"
    if file_digest(path) != expected:
        return f"content does not match its digest {digest_path(path).name} (changed on disk)"
    return None
