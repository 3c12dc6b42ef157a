"""Atomic writes (adadf.atomic) from more than one thread: the report writer writes while training does."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from adadf.atomic import atomic_open

STATUS = Path("/proc/self/status")


@pytest.mark.skipif(not STATUS.exists() or "Umask:" not in STATUS.read_text(), reason="the OS does not report the umask")
def test_a_new_file_gets_the_umask_mode_without_setting_the_umask(tmp_path: Path, monkeypatch):
    """Setting the umask to read it would, for a moment, change the mode of files other threads
    create; where the OS tells the umask (Linux), it is only read."""
    umask = os.umask(0o027)
    try:
        def refuse(mask: int) -> int:
            raise AssertionError("os.umask called while writing")

        monkeypatch.setattr(os, "umask", refuse)
        with atomic_open(tmp_path / "report.csv") as f:
            f.write("x\n")
        monkeypatch.undo()
        assert (tmp_path / "report.csv").stat().st_mode & 0o777 == 0o640  # 0o666 less the umask 0o027
    finally:
        os.umask(umask)
