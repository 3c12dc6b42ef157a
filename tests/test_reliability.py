"""Nothing lost, nothing silently wrong (issue 12): a run's record, one run per dir, a full disk,
killed writers, unusable checkpoints, failed starts.

In-process runs (as in test_resume.py) where Hydra's own behaviour is not the point; ``python
run.py`` subprocesses where it is (``.hydra/``, run.log, the console) or where a second process is.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from adadf import cli
from adadf.engine import rundir
from adadf.engine.checkpoint import CheckpointWriteError, load_checkpoint, save_all_atomic, save_atomic
from adadf.engine.interrupt import StopRequested
from adadf.engine.trainer import Trainer
from adadf.errors import UserError
from adadf.train import RunInterrupted

from conftest import FAST, ROOT, cli_env
from test_resume import TINY, straight, train_here, train_with  # noqa: F401 - straight: two epochs, copied here

REAL_SAVE = torch.save


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def run_py(args: list[str], cwd: Path, cache_dir: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=cwd, env=cli_env(cache_dir),
                          capture_output=True, text=True, timeout=timeout)


def reasons(stderr: str) -> list[str]:
    """The lines a failed command printed, less Hydra's own "Error executing job ..." line."""
    return [line for line in stderr.splitlines() if line.strip() and "Error executing job" not in line]


# ---------------------------------------------------------------------- 2. the record of a run
def test_refused_commands_leave_the_runs_hydra_record_alone(straight: Path, tmp_path: Path, cache_dir: Path):
    run = copy_run(straight, tmp_path / "run")
    record = {name: f"# the original run's {name}\n" for name in ("config.yaml", "hydra.yaml", "overrides.yaml")}
    (run / ".hydra").mkdir(exist_ok=True)
    for name, text in record.items():
        (run / ".hydra" / name).write_text(text)
    summary = (run / "summary.json").read_text()

    for extra in (["trainer.epochs=9", "fusion.beta=7"],  # refused: the dir holds a run, no trainer.resume
                  ["trainer.resume=auto", "backbone=resnet34"]):  # refused: another backbone
        proc = run_py([*TINY, *extra, f"hydra.run.dir={run}"], tmp_path, cache_dir)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        assert len(reasons(proc.stderr)) == 1, proc.stderr
        for name, text in record.items():
            assert (run / ".hydra" / name).read_text() == text, f"{extra}: .hydra/{name} rewritten"
        assert (run / "summary.json").read_text() == summary
    assert not (run / ".lock").exists()


# ---------------------------------------------------------------------- 3. one run per run dir
def test_second_run_into_a_busy_dir_is_refused_until_the_first_is_killed(tmp_path: Path, cache_dir: Path):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, str(ROOT / "run.py"), *TINY, "trainer.epochs=1000",
                               f"hydra.run.dir={run}"], cwd=tmp_path, env=cli_env(cache_dir),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not (run / "checkpoints" / "last.pt").exists():  # the first run is well under way
            assert holder.poll() is None, holder.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the first run wrote no checkpoint"
            time.sleep(0.1)
        with pytest.raises(UserError) as err:
            train_here(run, cache_dir, "trainer.epochs=2", "trainer.resume=auto")
        assert f"PID {holder.pid}" in str(err.value) and "\n" not in str(err.value)
        assert load_checkpoint(run / "checkpoints" / "last.pt")["config"]["trainer"]["resume"] is None
    finally:
        holder.send_signal(signal.SIGKILL)  # kill -9: no cleanup runs, the lock file stays behind
        holder.communicate()
    assert (run / ".lock").exists()
    done = load_checkpoint(run / "checkpoints" / "last.pt")["epoch"]
    summary = train_here(run, cache_dir, f"trainer.epochs={done}", "trainer.resume=auto")
    assert summary["status"] == "completed" and summary["epochs_completed"] == done
    assert not (run / ".lock").exists()


def test_a_dead_holders_lock_is_taken_over(tmp_path: Path):
    """The dead run's forked children (DataLoader workers) may still share its flock for a while."""
    held = rundir.RunLock(tmp_path).acquire()
    with pytest.raises(rundir.RunDirBusy, match=f"PID {os.getpid()} "):
        rundir.RunLock(tmp_path).acquire()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)  # a process that has exited
    (tmp_path / ".lock").write_text(f"pid {pid} host {os.uname().nodename}\n")
    taken = rundir.RunLock(tmp_path).acquire()  # the old holder is dead: its lock file is replaced
    assert (tmp_path / ".lock").read_text().startswith(f"pid {os.getpid()} ")
    taken.release()
    held.release()
    assert not (tmp_path / ".lock").exists()


# ---------------------------------------------------------------------- 4. a full disk
def test_disk_full_while_saving_is_one_line_and_the_summary_agrees(straight: Path, tmp_path: Path,
                                                                   cache_dir: Path, monkeypatch):
    run = copy_run(straight, tmp_path / "run")
    before = (run / "checkpoints" / "last.pt").read_bytes()

    def full_disk(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 the first bytes")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointWriteError) as err:
        train_here(run, cache_dir, "trainer.epochs=3", "trainer.resume=auto")
    monkeypatch.undo()
    last = run / "checkpoints" / "last.pt"
    assert str(err.value) == f"No space left on device writing {last}; the last good checkpoint is epoch 2"
    assert cli.one_line(err.value) == str(err.value)

    assert last.read_bytes() == before
    assert sorted(p.name for p in last.parent.iterdir()) == ["best.pt", "last.pt"]  # no temp files left
    summary = json.loads((run / "summary.json").read_text())
    metrics = pd.read_csv(run / "metrics.csv")
    assert summary["status"] == "failed" and summary["error"] == str(err.value)
    assert summary["epochs_completed"] == 2 == load_checkpoint(last)["epoch"]
    assert metrics["epoch"].tolist() == [1, 2]
    assert summary["best_acc"] == metrics["test_acc"].max() == load_checkpoint(last)["progress"]["best_acc"]
    assert summary["best_epoch"] == load_checkpoint(run / "checkpoints" / "best.pt")["epoch"]


def test_checkpoints_of_one_epoch_are_replaced_together(tmp_path: Path, monkeypatch):
    """best.pt failing after last.pt was written leaves both as they were."""
    last, best = tmp_path / "last.pt", tmp_path / "best.pt"
    save_atomic({"model": {}, "epoch": 1}, last)
    save_atomic({"model": {}, "epoch": 1}, best)
    calls = []

    def second_write_fails(obj, f, *args, **kwargs):
        calls.append(obj["epoch"])
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        REAL_SAVE(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", second_write_fails)
    with pytest.raises(OSError) as err:
        save_all_atomic({last: {"model": {}, "epoch": 2}, best: {"model": {}, "epoch": 2}})
    monkeypatch.undo()
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(best)
    assert load_checkpoint(last)["epoch"] == load_checkpoint(best)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]


def test_unwritable_output_location_is_one_line(tmp_path: Path, cache_dir: Path):
    line = cli.one_line(PermissionError(errno.EROFS, "Read-only file system", "/mnt/ro/run"))
    assert line is not None and line.startswith("/mnt/ro/run: Read-only file system")
    assert cli.one_line(OSError(errno.EIO, "Input/output error", "/x")) is None  # not the user's: traceback

    target = tmp_path / "ro"
    target.mkdir()
    target.chmod(0o500)
    unwritable = target / "run"
    try:
        unwritable.mkdir()
        unwritable.rmdir()
        unwritable = Path("/sys/adadf-run")  # as root: /sys refuses new entries
        unwritable.mkdir()
        unwritable.rmdir()
        pytest.skip("no unwritable location here")
    except OSError:
        pass
    proc = run_py([*TINY, f"hydra.run.dir={unwritable}"], tmp_path, cache_dir)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    (line,) = reasons(proc.stderr)
    assert line.startswith(f"{unwritable}: ")


# ---------------------------------------------------------------------- 6. smaller ones
def test_temp_files_of_a_killed_writer_are_removed_at_start(straight: Path, tmp_path: Path, cache_dir: Path):
    run = copy_run(straight, tmp_path / "run")
    stale = run / "checkpoints" / ".last.pt.k1ll3d_9.tmp"
    stale.write_bytes(b"PK\x03\x04 half a checkpoint")
    others = [run / "checkpoints" / "notes.tmp", run / ".metrics.csv.abcd1234.tmp"]  # not ours to remove
    for path in others:
        path.write_text("keep")
    summary = train_here(run, cache_dir, "trainer.epochs=2", "trainer.resume=auto")
    assert summary["status"] == "completed"
    assert not stale.exists()
    assert all(path.exists() for path in others)


def test_truncated_last_checkpoint_names_the_fallback(straight: Path, tmp_path: Path, cache_dir: Path):
    run = copy_run(straight, tmp_path / "run")
    last = run / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:100_000])
    with pytest.raises(UserError) as err:
        train_here(run, cache_dir, "trainer.epochs=2", "trainer.resume=auto")
    message = str(err.value)
    best = run / "checkpoints" / "best.pt"
    assert message.startswith(f"{last}: cannot read checkpoint (truncated, corrupt") and "\n" not in message
    assert f"{best} (epoch {load_checkpoint(best)['epoch']}) is intact" in message and f"backbone.checkpoint={best}" in message


def test_resume_with_changed_values_is_refused_unless_allowed(straight: Path, tmp_path: Path, cache_dir: Path,
                                                              caplog):
    run = copy_run(straight, tmp_path / "run")
    changed = ["fusion.beta=7", "optimizer.lr=0.01", "scheduler.gamma=0.5"]
    with pytest.raises(UserError) as err:
        train_here(run, cache_dir, "trainer.epochs=3", "trainer.resume=auto", *changed)
    message = str(err.value)
    assert "\n" not in message and "trainer.resume_allow_changes=true" in message
    for key in ("fusion.beta 3.0 -> 7.0", "optimizer.lr 0.001 -> 0.01", "scheduler.gamma 0.9 -> 0.5"):
        assert key in message, message
    assert "trainer.epochs" not in message  # more epochs is what resuming is for
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 2

    with caplog.at_level("WARNING"):
        summary = train_here(run, cache_dir, "trainer.epochs=3", "trainer.resume=auto",
                             "trainer.resume_allow_changes=true", *changed)
    assert summary["status"] == "completed" and summary["epochs_completed"] == 3
    assert "fusion.beta 3.0 -> 7.0" in caplog.text
    recorded = load_checkpoint(run / "checkpoints" / "last.pt")["config"]  # as sent to W&B
    assert recorded["resume_changes"]["fusion.beta"] == {"checkpoint": 3.0, "now": 7.0}
    assert set(recorded["resume_changes"]) == {"fusion.beta", "optimizer.lr", "scheduler.gamma"}


def test_resume_with_another_backbone_names_both(straight: Path, tmp_path: Path, cache_dir: Path):
    run = copy_run(straight, tmp_path / "run")
    with pytest.raises(UserError) as err:
        train_here(run, cache_dir, "trainer.epochs=2", "trainer.resume=auto", "backbone=resnet34")
    message = str(err.value)
    assert "\n" not in message and "state_dict" not in message
    assert "backbone resnet18" in message and "backbone.name=resnet34" in message


def test_resume_from_best_pt_says_it_holds_weights_only(straight: Path, tmp_path: Path, cache_dir: Path):
    best = straight / "checkpoints" / "best.pt"
    with pytest.raises(UserError) as err:
        train_here(tmp_path / "run", cache_dir, "trainer.epochs=2", f"trainer.resume={best}")
    message = str(err.value)
    assert "weights only" in message and str(straight / "checkpoints" / "last.pt") in message
    assert f"backbone.checkpoint={best}" in message and "\n" not in message


def test_stop_message_quotes_the_run_dir(tmp_path: Path, cache_dir: Path, monkeypatch):
    def stopped(self):
        raise StopRequested("SIGTERM")

    monkeypatch.setattr(Trainer, "fit", stopped)
    run = tmp_path / "run dir with space"
    with pytest.raises(RunInterrupted) as err:
        train_here(run, cache_dir, "trainer.epochs=1")
    assert str(err.value).endswith(f"trainer.resume=auto hydra.run.dir='{run}'")
    assert json.loads((run / "summary.json").read_text())["status"] == "interrupted"


def test_failed_start_writes_summary_and_run_log_once(tmp_path: Path, cache_dir: Path):
    run = tmp_path / "run"
    proc = run_py([*TINY, "fusion.beta=0.5", f"hydra.run.dir={run}"], tmp_path, cache_dir)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    (line,) = reasons(proc.stderr)
    assert line.startswith("fusion.beta=0.5: ")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["error"] == line
    assert (run / "run.log").read_text().count(line) == 1
    assert (run / ".hydra" / "overrides.yaml").read_text().count("fusion.beta=0.5") == 1
    assert line not in proc.stdout  # the console shows it once (stderr)


def test_failure_after_the_claim_goes_to_run_log_too(tmp_path: Path):
    """A dataset that is not there fails while the run is built: the line reaches run.log's handler
    (Hydra's file handler; here one of our own), not the console's (adadf.cli prints it once)."""
    run = tmp_path / "run"
    run.mkdir()
    handler = logging.FileHandler(run / "run.log")
    logging.getLogger().addHandler(handler)
    try:
        with pytest.raises(UserError) as err:
            train_with(run, [*FAST, "dataset=raf", f"dataset.root={tmp_path / 'nowhere'}"])
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    line = str(err.value)
    assert (run / "run.log").read_text().count(line) == 1
    assert json.loads((run / "summary.json").read_text())["error"] == line
