"""A run dir belongs to one run at a time.

The run holds ``<run dir>/.lock`` with ``fcntl.flock`` for its whole life; the file names the
holder (``pid <PID> host <HOST>``) so a second run is refused with one line naming it. The kernel
drops a flock when its process dies, so a ``kill -9``'d run frees its dir by itself. One stale case
remains: children forked by the dead run (DataLoader workers) share its lock until they notice and
exit; a lock whose recorded holder is a dead process on this host is therefore taken over.
"""
from __future__ import annotations

import errno
import fcntl
import os
import socket
from pathlib import Path

from adadf.errors import UserError

LOCK_NAME = ".lock"


class RunDirBusy(UserError):
    """Another live run holds this run dir."""


def _holder(fd: int) -> tuple[int | None, str | None]:
    """(pid, host) recorded in an open lock file; None where unreadable."""
    try:
        words = os.pread(fd, 200, 0).decode(errors="replace").split()
    except OSError:
        return None, None
    fields = dict(zip(words[::2], words[1::2]))
    pid = fields.get("pid")
    return (int(pid) if pid and pid.isdigit() else None), fields.get("host")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


class RunLock:
    """``with RunLock(run_dir):`` or ``acquire()`` ... ``release()``; raises ``RunDirBusy``."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> "RunLock":
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(5):  # retried only when another process replaced or removed the file meanwhile
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                if err.errno not in (errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
                pid, host = _holder(fd)
                if pid is not None and host == socket.gethostname() and not _alive(pid):
                    self._remove_if_same(fd)  # stale: the dead run's forked children still share it
                    os.close(fd)
                    continue
                os.close(fd)
                who = f"PID {pid} on {host}" if pid is not None else "a process that has not written its PID yet"
                raise RunDirBusy(
                    f"{self.run_dir} is in use by another run ({who}, lock file {self.path}): wait for it "
                    "to finish or stop it, or choose another hydra.run.dir"
                ) from None
            if not self._same_file(fd):  # removed by its previous holder between our open and flock
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} host {socket.gethostname()}\n".encode(), 0)
            self._fd = fd
            return self
        raise RunDirBusy(f"{self.run_dir}: could not take its lock file {self.path} (it keeps changing)")

    def release(self) -> None:
        """Remove the lock file, then unlock (a process that opened it meanwhile sees it gone and retries)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            self._remove_if_same(fd)
        finally:
            os.close(fd)  # drops the flock

    def _same_file(self, fd: int) -> bool:
        try:
            return os.stat(self.path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            return False

    def _remove_if_same(self, fd: int) -> None:
        if self._same_file(fd):
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
