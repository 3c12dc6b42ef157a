"""Listing input folders: links to folders are followed, symbolic link loops are named and skipped.

Datasets and photo folders often hold symlinks (a class folder linked in from another disk). Two
kinds can never be read: a link that leads back to itself, directly or through other links (``ls``
says "Too many levels of symbolic links"), and a link to a folder on its own path (following it
would walk the same folders forever). Each is skipped with one warning naming it, and the rest of
the folder goes on; before, they were dropped without a word or failed later in the decoder.
"""
from __future__ import annotations

import errno
import logging
import os
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger(__name__)


def is_link_loop(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a symlink that never resolves because it leads back to itself (ELOOP)."""
    try:
        os.stat(path)
    except OSError as err:
        return err.errno == errno.ELOOP
    return False


def _within(path: str, folder: str) -> bool:
    """Whether the real path ``path`` is ``folder`` or lies inside it."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _leads_back(real: str, chain: Sequence[str]) -> bool:
    """Whether a folder at ``real`` is one of ``chain`` (real paths of the folders being walked) or
    lies above one: walking it would reach that folder again."""
    return any(_within(c, real) for c in chain)


def _loop_reason(entry: os.DirEntry, chain: Sequence[str]) -> str | None:
    """Why the link ``entry`` (in the folder ``chain[-1]``) is a loop; None when it is none."""
    if not entry.is_symlink():
        return None
    if is_link_loop(entry.path):
        return "it leads back to itself"
    real = os.path.realpath(entry.path)
    if os.path.isdir(real) and _leads_back(real, chain):
        return f"it points at {real}, a folder on its own path"
    return None


def skip_loop(entry: os.DirEntry, chain: Sequence[str]) -> bool:
    """True (after one warning naming it) when ``entry`` is a symbolic link loop."""
    reason = _loop_reason(entry, chain)
    if reason is not None:
        log.warning("%s: a symbolic link loop (%s); skipped", entry.path, reason)
    return reason is not None


def scan(folder: Path) -> list[os.DirEntry]:
    """The entries of ``folder``; an unreadable folder is one warning and no entries (a walk goes on)."""
    try:
        with os.scandir(folder) as entries:
            return list(entries)
    except OSError as err:
        log.warning("%s: cannot list this folder (%s); skipped", folder, err.strerror or err)
        return []


def link_loops(folder: Path) -> set[str]:
    """The names in ``folder`` that are symbolic link loops, each warned about once (for readers that
    list one folder at a time, e.g. class folders)."""
    chain = (os.path.realpath(folder),)
    return {entry.name for entry in scan(folder) if skip_loop(entry, chain)}


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # follows links
    except OSError:
        return False


def list_tree(root: Path, *, hidden: bool = True, avoid: Path | None = None) -> tuple[list[str], list[str]]:
    """(files, folders) under ``root`` as sorted relative paths with ``/``, following links to folders.

    Loops are warned about and skipped (module docstring); ``hidden=False`` leaves out names that
    start with a dot; ``avoid`` is a folder never walked into, however it is linked (align's output).
    Files are regular files and links to them; a dangling link is listed too, so that the reader
    names it as unreadable. Other special files (pipes, sockets) are left out.
    """
    avoid_real = os.path.realpath(avoid) if avoid is not None else None
    files: list[str] = []
    folders: list[str] = []
    pending: list[tuple[str, tuple[str, ...]]] = [("", (os.path.realpath(root),))]
    while pending:
        rel, chain = pending.pop()
        for entry in scan(root / rel if rel else root):
            if (not hidden and entry.name.startswith(".")) or skip_loop(entry, chain):
                continue
            path = f"{rel}/{entry.name}" if rel else entry.name
            if not _is_dir(entry):
                if entry.is_file() or entry.is_symlink():
                    files.append(path)
                continue
            real = os.path.realpath(entry.path) if entry.is_symlink() else os.path.join(chain[-1], entry.name)
            if avoid_real is not None and _within(real, avoid_real):
                log.warning("%s: leads into %s (the output); skipped", entry.path, avoid)
                continue
            folders.append(path)
            pending.append((path, (*chain, real)))
    return sorted(files), sorted(folders)
