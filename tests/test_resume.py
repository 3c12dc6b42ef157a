"""Runs that survive: exact resume, SIGTERM/SIGINT, atomic checkpoints, NaN stop, determinism.

In-process runs (Hydra's compose API + ``adadf.train.train`` with the run dir as cwd) keep this fast;
signals and exit codes are checked on real ``python run.py`` subprocesses.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from torch.utils.data import TensorDataset

from adadf.engine.checkpoint import load_checkpoint, save_atomic
from adadf.engine.interrupt import StopFlag
from adadf.engine.loop import NonFiniteLoss
from adadf.data.bundle import make_loader
from adadf.engine.trainer import Trainer, _reseed
from adadf.errors import UserError
from adadf.task import train
from adadf.train import RunInterrupted

import fakedata
from conftest import CONF, FAST, ROOT, cli_env

# 24 training images in batches of 8: 3 steps per epoch, about a second per epoch on one CPU thread.
TINY = [*FAST, "dataset.train_size=24", "dataset.test_size=7", "dataset.batch_size=8"]


def timing_columns(frame: pd.DataFrame) -> list[str]:
    """Wall-clock columns (epoch_time_s, train_time_s, ld_time_s, train_images_per_s): never equal."""
    return [c for c in frame.columns if c.endswith(("_time_s", "_per_s"))]


def metrics_without_timing(run_dir: Path) -> pd.DataFrame:
    frame = pd.read_csv(run_dir / "metrics.csv")
    return frame.drop(columns=timing_columns(frame))


@contextmanager
def chdir(path: Path):
    previous = Path.cwd()
    path.mkdir(parents=True, exist_ok=True)
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def train_with(run_dir: Path, overrides: list[str]) -> dict:
    """``python run.py overrides hydra.run.dir=run_dir``, in this process."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    with chdir(run_dir):  # outside Hydra's app the run dir is the cwd
        return train(cfg)


def train_here(run_dir: Path, cache_dir: Path, *overrides: str) -> dict:
    """``python run.py TINY overrides hydra.run.dir=run_dir``, in this process."""
    return train_with(run_dir, [*TINY, f"dataset.root={cache_dir}", *overrides])


def completed_cli_run(factory: pytest.TempPathFactory, cache_dir: Path, name: str, *overrides: str) -> Path:
    """A fresh dir with a completed ``python run.py TINY overrides`` (the real command line, another process)."""
    out = factory.mktemp(name)
    args = [*TINY, f"dataset.root={cache_dir}", *overrides, f"hydra.run.dir={out}"]
    done = subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=out, env=cli_env(cache_dir),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((out / "summary.json").read_text())["status"] == "completed"
    return out


def completed_run(factory: pytest.TempPathFactory, cache_dir: Path, name: str, *overrides: str) -> Path:
    """A fresh dir with a completed in-process run of ``overrides`` (for module-scoped fixtures)."""
    out = factory.mktemp(name)
    summary = train_here(out, cache_dir, *overrides)
    assert summary["status"] == "completed"
    return out


def assert_same(a, b, path: str = "checkpoint") -> None:
    """Recursive bit-exact equality of checkpoint contents (tensors, arrays, lists, dicts, numbers)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), path
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b), path
    elif isinstance(a, dict):
        assert set(a) == set(b), f"{path}: keys differ {set(a) ^ set(b)}"
        for key in a:
            if isinstance(key, str) and key.endswith(("_time_s", "_per_s")):
                continue  # wall-clock figures in the metrics history
            assert_same(a[key], b[key], f"{path}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and a != a:
        assert b != b, path  # NaN == NaN here
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


TRAINING_STATE = ("model", "optimizer", "scheduler", "scaler", "method", "epoch", "rng", "progress", "class_names")
BEST_STATE = ("model", "method", "epoch", "progress", "class_names")  # best.pt holds no resume state


def assert_same_training_state(a: Path, b: Path, keys: tuple[str, ...] = TRAINING_STATE) -> None:
    """Two checkpoints hold the same model, optimizer, scheduler, scaler, class distributions, RNG,
    epoch and metrics history (the configs differ only in trainer.resume and the run dir)."""
    sa, sb = load_checkpoint(a), load_checkpoint(b)
    for key in keys:
        assert_same(sa[key], sb[key], key)


@pytest.fixture(scope="module")
def straight(tmp_path_factory, cache_dir) -> Path:
    """Two epochs in one go: the run every other run here must reproduce."""
    out = tmp_path_factory.mktemp("straight")
    summary = train_here(out, cache_dir, "trainer.epochs=2")
    assert summary["status"] == "completed" and summary["epochs_completed"] == 2
    return out


# ------------------------------------------------------------------------------------ exact resume
def test_resume_equals_straight_run(straight: Path, tmp_path: Path, cache_dir: Path):
    run = tmp_path / "resumed"
    first = train_here(run, cache_dir, "trainer.epochs=1")
    assert first["epochs_completed"] == 1
    epoch1 = tmp_path / "epoch1.pt"
    shutil.copyfile(run / "checkpoints" / "last.pt", epoch1)

    # trainer.resume=auto: the same run dir continues after epoch 1.
    resumed = train_here(run, cache_dir, "trainer.epochs=2", "trainer.resume=auto")
    assert resumed["status"] == "completed" and resumed["epochs_completed"] == 2
    assert_same_training_state(straight / "checkpoints" / "last.pt", run / "checkpoints" / "last.pt")
    assert_same_training_state(straight / "checkpoints" / "best.pt", run / "checkpoints" / "best.pt", BEST_STATE)
    pd.testing.assert_frame_equal(metrics_without_timing(straight), metrics_without_timing(run))
    assert pd.read_csv(run / "metrics.csv")["epoch"].tolist() == [1, 2]  # epoch 1 not redone
    for key in ("best_acc", "best_epoch", "final_acc", "best_mean_class_acc"):
        assert resumed[key] == json.loads((straight / "summary.json").read_text())[key], key
    # wall_time_s: the run's, both invocations (the first up to its checkpoint); this one's apart
    earlier = load_checkpoint(epoch1)["progress"]["wall_time_s"]
    assert 0 < earlier <= first["wall_time_s"] == first["wall_time_this_run_s"]
    assert resumed["wall_time_s"] == pytest.approx(earlier + resumed["wall_time_this_run_s"])
    assert load_checkpoint(run / "checkpoints" / "last.pt")["progress"]["wall_time_s"] > earlier

    # trainer.resume=PATH: a new run dir continues from a checkpoint file, here one written before
    # progress kept the wall time (no wall_time_s: counted from 0).
    old = load_checkpoint(epoch1)
    del old["progress"]["wall_time_s"]
    save_atomic(old, epoch1)
    elsewhere = tmp_path / "from-path"
    from_old = train_here(elsewhere, cache_dir, "trainer.epochs=2", f"trainer.resume={epoch1}")
    assert from_old["wall_time_s"] == from_old["wall_time_this_run_s"]
    assert_same_training_state(straight / "checkpoints" / "last.pt", elsewhere / "checkpoints" / "last.pt")
    pd.testing.assert_frame_equal(metrics_without_timing(straight), metrics_without_timing(elsewhere))


def epoch_orders(loader, epochs: range, seed: int = 0) -> list[list[int]]:
    """The sample order of each epoch in ``epochs``, reseeded as the trainer does."""
    orders = []
    for epoch in epochs:
        _reseed(loader, seed, epoch, 0)
        orders.append(torch.cat([batch for (batch,) in loader]).tolist())
    return orders


@pytest.mark.parametrize("num_workers", [0, 2])
def test_shuffle_order_is_a_function_of_the_epoch(num_workers: int):
    """With persistent workers, a loader that already served an epoch and a fresh one (a resumed
    run) must shuffle the next epoch alike."""
    def loader():
        return make_loader(TensorDataset(torch.arange(24)), batch_size=8, num_workers=num_workers, train=True,
                           seed=0, pin_memory=False)

    straight = epoch_orders(loader(), range(1, 4))
    resumed = epoch_orders(loader(), range(2, 4))
    assert straight[1:] == resumed
    assert straight[0] != straight[1]  # epochs do differ


def test_seeded_runs_are_identical(straight: Path, tmp_path: Path, cache_dir: Path):
    again = train_here(tmp_path / "again", cache_dir, "trainer.epochs=2")
    assert again["epochs_completed"] == 2
    pd.testing.assert_frame_equal(metrics_without_timing(straight), metrics_without_timing(tmp_path / "again"))
    assert_same_training_state(straight / "checkpoints" / "last.pt", tmp_path / "again" / "checkpoints" / "last.pt")
    # ... and the comparison can fail: another seed trains differently.
    train_here(tmp_path / "seed1", cache_dir, "trainer.epochs=1", "seed=1")
    first_row = metrics_without_timing(straight).iloc[0]
    assert metrics_without_timing(tmp_path / "seed1").iloc[0]["train_loss"] != first_row["train_loss"]


# ------------------------------------------------------------------------------- signals (CLI)
def start_run(args: list[str], cwd: Path, cache_dir: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "run.py"), *args], cwd=cwd, env=cli_env(cache_dir),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def signal_after_first_checkpoint(proc: subprocess.Popen, run: Path, signum: int, limit: float = 300) -> tuple[str, str]:
    """Wait until epoch 1's last.pt exists, send ``signum``, return (stdout, stderr) at exit."""
    last = run / "checkpoints" / "last.pt"
    deadline = time.monotonic() + limit
    while not last.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"run exited ({proc.returncode}) before its first checkpoint:\n{err[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("no checkpoint within the time limit")
        time.sleep(0.02)
    proc.send_signal(signum)
    return proc.communicate(timeout=limit)


def wandb_run_ids(run: Path) -> list[str]:
    """Ids of the offline W&B runs in a run dir (dirs named offline-run-<time>-<id>), oldest first."""
    return [p.name.rsplit("-", 1)[-1] for p in sorted((run / "wandb").glob("offline-run-*"))]


def test_sigterm_then_resume_completes(straight: Path, tmp_path: Path, cache_dir: Path):
    run = tmp_path / "run"
    args = [*TINY, "trainer.epochs=2", "logger=wandb", f"hydra.run.dir={run}"]
    proc = start_run(args, tmp_path, cache_dir)
    _, err = signal_after_first_checkpoint(proc, run, signal.SIGTERM)

    assert proc.returncode != 0
    assert "Traceback" not in err
    stop_lines = [line for line in err.splitlines() if "stopped by SIGTERM" in line]
    assert len(stop_lines) == 1 and "trainer.resume=auto" in stop_lines[0], err[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    done = summary["epochs_completed"]
    assert done == 1  # stopped within epoch 2, whose partial work is discarded
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == done
    assert len(pd.read_csv(run / "metrics.csv")) == done
    (interrupted_run,) = (run / "wandb").glob("offline-run-*")
    assert "finishing run" in (interrupted_run / "logs" / "debug.log").read_text()  # W&B run closed

    resumed = subprocess.run([sys.executable, str(ROOT / "run.py"), *args, "trainer.resume=auto"], cwd=tmp_path,
                             env=cli_env(cache_dir), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs_completed"] == 2
    assert pd.read_csv(run / "metrics.csv")["epoch"].tolist() == [1, 2]
    # The discarded partial epoch leaves no trace: the result is the uninterrupted run's.
    pd.testing.assert_frame_equal(metrics_without_timing(straight), metrics_without_timing(run))
    ids = wandb_run_ids(run)
    assert len(ids) == 2 and ids[0] == ids[1], ids  # the resumed W&B run continues the same run id


@pytest.mark.parametrize("pipeline", ["reference", "fast"])
def test_resume_is_exact_with_augmenting_workers(tmp_path: Path, monkeypatch, pipeline: str):
    """Per-image augmentation in a DataLoader worker process: workers start afresh each epoch,
    seeded from the per-epoch generator, so a resumed run draws the augmentations of a straight one."""
    monkeypatch.setenv("ADADF_CACHE_DIR", str(tmp_path / "cache"))
    root = fakedata.write_raf(tmp_path / "raf", per_class=2, size=40, test_per_class=1)
    base = ["dataset=raf", f"dataset.root={root}", f"dataset.pipeline={pipeline}", "dataset.num_workers=1",
            "dataset.image_size=32", "dataset.batch_size=4", "logger=none", "trainer.progress=false"]
    train_with(tmp_path / "straight", [*base, "trainer.epochs=2"])
    train_with(tmp_path / "resumed", [*base, "trainer.epochs=1"])
    train_with(tmp_path / "resumed", [*base, "trainer.epochs=2", "trainer.resume=auto"])
    assert_same_training_state(tmp_path / "straight" / "checkpoints" / "last.pt",
                               tmp_path / "resumed" / "checkpoints" / "last.pt")
    pd.testing.assert_frame_equal(metrics_without_timing(tmp_path / "straight"),
                                  metrics_without_timing(tmp_path / "resumed"))


@pytest.fixture
def default_sigint():
    """Python's own Ctrl-C handler for the test, whatever this process inherited (a background job
    starts with SIGINT ignored); the previous handler is put back afterwards."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def test_sigint_stops_cleanly(tmp_path: Path, cache_dir: Path, default_sigint):
    """Ctrl-C, in this process: a thread sends SIGINT as soon as epoch 1's checkpoint exists. The
    run has many epochs left, so the signal lands while training (a stop takes at most one batch)."""
    run = tmp_path / "run"
    last = run / "checkpoints" / "last.pt"

    def interrupt() -> None:
        deadline = time.monotonic() + 300
        while not last.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGINT)

    sender = threading.Thread(target=interrupt, daemon=True)
    sender.start()
    with pytest.raises(RunInterrupted) as err:
        train_here(run, cache_dir, "trainer.epochs=50")
    sender.join()
    assert str(err.value).startswith("stopped by SIGINT after epoch 1;") and "\n" not in str(err.value)
    assert "trainer.resume=auto" in str(err.value)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["epochs_completed"] == 1
    assert load_checkpoint(last)["epoch"] == 1
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored


def test_second_ctrl_c_stops_at_once_and_is_still_an_interrupt(tmp_path: Path, cache_dir: Path, monkeypatch,
                                                               default_sigint):
    with StopFlag() as flag:
        os.kill(os.getpid(), signal.SIGINT)  # first: only noted, the loop stops at the next batch
        assert flag.signame == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # second: raised wherever the run is
            time.sleep(1)  # (the handler runs between bytecodes; never reaches the end)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler

    def fit_interrupted_at_once(self):
        raise KeyboardInterrupt  # what the second Ctrl-C raises inside Trainer.fit

    monkeypatch.setattr(Trainer, "fit", fit_interrupted_at_once)
    with pytest.raises(RunInterrupted) as err:
        train_here(tmp_path / "run", cache_dir, "trainer.epochs=2")
    assert "SIGINT" in str(err.value) and "trainer.resume=auto" in str(err.value) and "\n" not in str(err.value)
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "interrupted"


# ---------------------------------------------------------------------------- atomic checkpoints
def half_written_save(obj, f, *args, **kwargs):
    """torch.save that dies half-way: writes half the bytes, then fails like a full disk."""
    import io

    buffer = io.BytesIO()
    REAL_SAVE(obj, buffer)
    f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    f.flush()
    raise OSError(28, "No space left on device")


REAL_SAVE = torch.save


def copy_run(src: Path, dst: Path) -> Path:
    """A copy of a run dir without best.pt (checkpoints are large)."""
    (dst / "checkpoints").mkdir(parents=True)
    for name in ("metrics.csv", "summary.json", "checkpoints/last.pt"):
        shutil.copyfile(src / name, dst / name)
    return dst


def test_failed_checkpoint_write_keeps_previous(straight: Path, tmp_path: Path, cache_dir: Path, monkeypatch):
    run = copy_run(straight, tmp_path / "run")
    last = run / "checkpoints" / "last.pt"
    before = last.read_bytes()
    monkeypatch.setattr(torch, "save", half_written_save)
    with pytest.raises(OSError, match="No space left"):
        train_here(run, cache_dir, "trainer.epochs=3", "trainer.resume=auto")
    monkeypatch.undo()

    assert last.read_bytes() == before
    assert load_checkpoint(last)["epoch"] == 2
    assert [p.name for p in last.parent.iterdir()] == ["last.pt"]  # the half-written temp file is gone
    assert json.loads((run / "summary.json").read_text())["status"] == "failed"
    assert pd.read_csv(run / "metrics.csv")["epoch"].tolist() == [1, 2]


def test_kill_during_checkpoint_write_keeps_previous(tmp_path: Path):
    """A process killed in the middle of the write (no cleanup runs) leaves last.pt whole."""
    last = tmp_path / "checkpoints" / "last.pt"
    save_atomic({"model": {"w": torch.arange(4.0)}, "epoch": 1}, last)
    umask = os.umask(0)
    os.umask(umask)
    assert last.stat().st_mode & 0o777 == 0o666 & ~umask  # like any new file, not mkstemp's 0o600

    def dying_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a zip archive")
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    pid = os.fork()  # the child dies mid-write, as under `kill -9` or the OOM killer
    if pid == 0:
        try:
            torch.save = dying_save
            save_atomic({"model": {"w": torch.zeros(4)}, "epoch": 2}, last)
        finally:
            os._exit(1)  # never reached when the kill works
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    state = load_checkpoint(last)
    assert state["epoch"] == 1 and torch.equal(state["model"]["w"], torch.arange(4.0))
    leftovers = [p.name for p in last.parent.iterdir() if p.name != "last.pt"]
    assert len(leftovers) == 1 and leftovers[0].startswith(".last.pt.")  # only the dead writer's temp file


def test_truncated_or_foreign_checkpoint_is_one_line(straight: Path, tmp_path: Path, cache_dir: Path):
    run = tmp_path / "run"
    last = run / "checkpoints" / "last.pt"
    last.parent.mkdir(parents=True)
    with open(straight / "checkpoints" / "last.pt", "rb") as f:
        last.write_bytes(f.read(100_000))  # a truncated copy
    with pytest.raises(UserError) as err:
        train_here(run, cache_dir, "trainer.epochs=3", "trainer.resume=auto")
    message = str(err.value)
    assert str(last) in message and "cannot read checkpoint (truncated" in message and "\n" not in message

    # A checkpoint of another architecture does not fit this config.
    with pytest.raises(UserError) as err:
        train_here(tmp_path / "other", cache_dir, "trainer.epochs=3", "backbone=resnet34",
                   f"trainer.resume={straight / 'checkpoints' / 'last.pt'}")
    assert "does not fit this config" in str(err.value) and "\n" not in str(err.value)


# ------------------------------------------------------------------------------------ NaN stop
def test_nan_loss_stops_with_one_line(tmp_path: Path, cache_dir: Path):
    """lr x 1e30 after epoch 1 (ordinary config: scheduler.gamma) blows the weights up in epoch 2."""
    run = tmp_path / "run"
    with pytest.raises(NonFiniteLoss) as err:
        train_here(run, cache_dir, "trainer.epochs=3", "scheduler.gamma=1e30")
    message = str(err.value)
    assert isinstance(err.value, UserError) and "\n" not in message  # Hydra prints it as one line
    assert message.startswith("non-finite loss") and "at epoch 2, batch " in message
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["epochs_completed"] == 1
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())
    assert pd.read_csv(run / "metrics.csv")["epoch"].tolist() == [1]
