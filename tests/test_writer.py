"""The reports' background writer (adadf.tracking.writer): one thread, in order, nothing lost."""
from __future__ import annotations

import logging
import subprocess
import sys
import threading
from pathlib import Path

from adadf.tracking.writer import BackgroundWriter


def test_tasks_run_in_order_off_the_calling_thread():
    writer = BackgroundWriter(max_pending=2)
    seen: list[tuple[int, str]] = []
    for i in range(10):
        writer.submit(f"task {i}", lambda i=i: seen.append((i, threading.current_thread().name)))
    writer.close()
    assert [i for i, _ in seen] == list(range(10))
    assert {name for _, name in seen} == {writer.name}  # one thread, not the caller's


def test_close_waits_for_a_slow_task():
    writer = BackgroundWriter()
    release, done = threading.Event(), []
    writer.submit("slow", lambda: (release.wait(5), done.append(1)))
    threading.Timer(0.2, release.set).start()
    writer.close()
    assert done == [1]


def test_a_failed_task_is_a_warning_and_the_next_still_runs(caplog):
    writer = BackgroundWriter()
    after = []

    def fail() -> None:
        raise OSError(28, "No space left on device")

    with caplog.at_level(logging.WARNING, logger="adadf.tracking.writer"):
        writer.submit("plots/attention_e001.png", fail)
        writer.submit("the next", lambda: after.append(1))
        writer.close()
    assert after == [1]
    lines = [r.getMessage() for r in caplog.records]
    assert any("plots/attention_e001.png not written: [Errno 28] No space left on device" in m for m in lines), lines
    assert any(m.startswith("1 report(s) not written") for m in lines), lines  # again at close


def test_background_false_runs_at_once_on_the_callers_thread():
    writer = BackgroundWriter(background=False)
    names = []
    writer.submit("inline", lambda: names.append(threading.current_thread().name))
    assert names == [threading.current_thread().name]


def test_pending_tasks_are_written_before_the_interpreter_exits(tmp_path: Path):
    """A writer nobody closed: the process still finishes its queue, then exits (no hang)."""
    out = tmp_path / "late.txt"
    script = (
        "import time\n"
        "from adadf.tracking.writer import BackgroundWriter\n"
        "w = BackgroundWriter()\n"
        f"w.submit('late', lambda: (time.sleep(0.5), open({str(out)!r}, 'w').write('written')))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert out.read_text() == "written"
