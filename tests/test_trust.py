"""A run's files tell the truth (issue 16): a full disk is a full disk, a refused resume never
rewrites history, the report follows what is on disk.

In-process runs as in test_resume.py; a real small filesystem (a tmpfs) where this machine lets us
mount one.
"""
from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
from collections import namedtuple
from pathlib import Path

import pandas as pd
import pytest
import torch

from adadf import cli
from adadf.engine import checkpoint as checkpoint_module
from adadf.engine.checkpoint import CheckpointWriteError, load_checkpoint
from adadf.train import RunInterrupted

from test_resume import straight, train_here  # noqa: F401 - straight: two epochs, module-scoped

REAL_SAVE = torch.save
TORCH_FULL_DISK = "[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def assert_records_agree(run: Path, epoch: int) -> dict:
    """summary.json, metrics.csv, last.pt and best.pt all say ``epoch`` is the last saved one."""
    summary = json.loads((run / "summary.json").read_text())
    metrics = pd.read_csv(run / "metrics.csv")
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    best = load_checkpoint(run / "checkpoints" / "best.pt")
    assert summary["epochs_completed"] == epoch == last["epoch"]
    assert metrics["epoch"].tolist() == list(range(1, epoch + 1))
    assert best["epoch"] == summary["best_epoch"] <= epoch
    assert summary["best_acc"] == metrics["test_acc"].max() == last["progress"]["best_acc"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.pt", "last.pt"]  # no temps
    return summary


# ---------------------------------------------------------------------- 2. a full disk, for real
@contextlib.contextmanager
def small_filesystem(where: Path, size_bytes: int):
    """A tmpfs of ``size_bytes`` mounted at ``where``; skips the test where mounting is not allowed."""
    where.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None:
        pytest.skip("no mount command here: cannot make a small filesystem")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(where)],
                          capture_output=True, text=True)
    if proc.returncode:
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {proc.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_really_full_disk_is_one_line_and_every_record_agrees(straight: Path, tmp_path: Path,
                                                                cache_dir: Path):
    """Epoch 1's checkpoints fit; epoch 2's temp last.pt does not: torch's zip writer then raises a
    RuntimeError (not an OSError) that used to escape with a traceback and a summary of epoch 2."""
    last_size = (straight / "checkpoints" / "last.pt").stat().st_size
    best_size = (straight / "checkpoints" / "best.pt").stat().st_size
    with small_filesystem(tmp_path / "fs", last_size + best_size + last_size // 2) as fs:
        run = fs / "run"
        with pytest.raises(CheckpointWriteError) as err:
            train_here(run, cache_dir, "trainer.epochs=3")
        line = str(err.value)
        assert "\n" not in line and cli.one_line(err.value) == line
        assert line.startswith("No space left on device writing ") and line.endswith("last good checkpoint is epoch 1")
        summary = assert_records_agree(run, 1)
        assert summary["status"] == "failed" and summary["error"] == line


@pytest.mark.parametrize("free_bytes, expected", [
    (1 << 20, "No space left on device writing {last}; the last good checkpoint is epoch 2"),
    (10 << 30, f"RuntimeError: {TORCH_FULL_DISK} writing {{last}}; the last good checkpoint is epoch 2"),
])
def test_torch_writer_errors_are_one_line_naming_the_file(straight: Path, tmp_path: Path, cache_dir: Path,
                                                           monkeypatch, free_bytes: int, expected: str):
    run = copy_run(straight, tmp_path / "run")
    before = (run / "checkpoints" / "last.pt").read_bytes()

    def torch_full_disk(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 the first bytes")
        raise RuntimeError(TORCH_FULL_DISK)

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(torch, "save", torch_full_disk)
    monkeypatch.setattr(checkpoint_module.shutil, "disk_usage", lambda path: usage(free_bytes, 0, free_bytes))
    with pytest.raises(CheckpointWriteError) as err:
        train_here(run, cache_dir, "trainer.epochs=3", "trainer.resume=auto")
    monkeypatch.undo()
    last = run / "checkpoints" / "last.pt"
    assert str(err.value) == expected.format(last=last)
    assert last.read_bytes() == before
    assert_records_agree(run, 2)


# ------------------------------------------------------------- 6. Ctrl-C twice during the write
def test_second_ctrl_c_during_the_checkpoint_write_reports_what_is_on_disk(straight: Path, tmp_path: Path,
                                                                          cache_dir: Path, monkeypatch):
    run = copy_run(straight, tmp_path / "run")

    def interrupted_write(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 the first bytes")
        raise KeyboardInterrupt  # what the second Ctrl-C raises wherever the run is

    monkeypatch.setattr(torch, "save", interrupted_write)
    with pytest.raises(RunInterrupted) as err:
        train_here(run, cache_dir, "trainer.epochs=3", "trainer.resume=auto")
    monkeypatch.undo()
    assert str(err.value).startswith("stopped by SIGINT after epoch 2;")
    summary = assert_records_agree(run, 2)
    assert summary["status"] == "interrupted"


# ------------------------------------------------------------ 3-5. a resume never rewrites history
def snapshot(run: Path) -> dict[str, bytes]:
    """Every file of a run dir (the lock aside), by content."""
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def refused(run: Path, cache_dir: Path, *overrides: str, tiny: bool = True) -> str:
    """The one line a refused in-process run raises; the run's files must be exactly as they were."""
    from adadf.errors import UserError
    from test_resume import train_with

    before = snapshot(run)
    with pytest.raises(UserError) as err:
        if tiny:
            train_here(run, cache_dir, *overrides)
        else:
            train_with(run, list(overrides))
    assert snapshot(run) == before, f"{overrides}: the run's files changed"
    assert "\n" not in str(err.value)
    return str(err.value)


def test_resume_on_another_class_list_leaves_the_finished_run_as_it_was(straight: Path, tmp_path: Path,
                                                                       cache_dir: Path):
    import fakedata
    from conftest import FAST

    run = copy_run(straight, tmp_path / "run")
    three = fakedata.write_folder(tmp_path / "three", per_class=3, size=36)
    folder = [*FAST, "dataset=folder", f"dataset.root={three}", "dataset.num_classes=3", "dataset.batch_size=4",
              "trainer.epochs=3", "trainer.resume=auto"]
    line = refused(run, cache_dir, *folder, tiny=False)  # at the config check: names what differs
    assert "dataset.num_classes 7 -> 3" in line and "trainer.resume_allow_changes=true" in line
    line = refused(run, cache_dir, *folder, "trainer.resume_allow_changes=true", tiny=False)  # at the restore
    assert line.startswith(f"{run / 'checkpoints' / 'last.pt'}: does not fit this dataset: classes 7 -> 3 (")
    assert line.endswith(" -> cat, dog, owl); resume with the checkpoint's dataset, or start a new run in another "
                         "hydra.run.dir")


@pytest.mark.parametrize("override, key", [
    ("dataset.label_noise=0.2", "dataset.label_noise 0.0 -> 0.2"),
    ("dataset.image_size=40", "dataset.image_size 32 -> 40"),
    ("seed=1", "seed 0 -> 1"),
])
def test_resume_refuses_changed_data_and_seed(straight: Path, tmp_path: Path, cache_dir: Path, override: str,
                                             key: str):
    run = copy_run(straight, tmp_path / "run")
    line = refused(run, cache_dir, "trainer.epochs=3", "trainer.resume=auto", override)
    assert f"the config differs from the checkpoint's in {key};" in line


def test_resume_with_allowed_data_changes_records_them(straight: Path, tmp_path: Path, cache_dir: Path):
    run = copy_run(straight, tmp_path / "run")
    summary = train_here(run, cache_dir, "trainer.epochs=3", "trainer.resume=auto", "dataset.num_workers=1",
                         "seed=1", "trainer.resume_allow_changes=true")
    assert summary["status"] == "completed"
    changes = load_checkpoint(run / "checkpoints" / "last.pt")["config"]["resume_changes"]
    assert changes == {"seed": {"checkpoint": 0, "now": 1}}  # num_workers: how data are read, free to change


def test_a_run_that_lost_its_last_checkpoint_is_not_overwritten(straight: Path, tmp_path: Path, cache_dir: Path):
    run = copy_run(straight, tmp_path / "run")
    (run / "checkpoints" / "last.pt").unlink()  # the natural way to save space
    for resume in ([], ["trainer.resume=auto"]):
        line = refused(run, cache_dir, "trainer.epochs=2", *resume)
        assert line == (f"{run} holds a run (checkpoints/best.pt, metrics.csv, summary.json) whose "
                        "checkpoints/last.pt is gone, so it cannot be continued and is not overwritten: choose "
                        f"another hydra.run.dir; start a new run from its weights with "
                        f"backbone.checkpoint={run / 'checkpoints' / 'best.pt'}")
    other = copy_run(straight, tmp_path / "other")  # a resume from elsewhere into a dir with a run
    line = refused(run, cache_dir, "trainer.epochs=3", f"trainer.resume={other}")
    assert line.startswith(f"trainer.resume={other}: {run} holds a run")


def test_a_failed_start_does_not_make_a_run(tmp_path: Path, cache_dir: Path):
    """A dir holding only a failed start's summary is free for the corrected command."""
    from adadf.errors import UserError

    run = tmp_path / "run"
    with pytest.raises(UserError):
        train_here(run, cache_dir, "trainer.epochs=1", "fusion.threshold=2")
    assert json.loads((run / "summary.json").read_text())["status"] == "failed"
    assert train_here(run, cache_dir, "trainer.epochs=1")["status"] == "completed"


# ------------------------------------------------------- 10. evaluation into a training run's dir
def test_evaluation_into_a_training_run_dir_writes_its_own_subdirectory(straight: Path, tmp_path: Path,
                                                                        cache_dir: Path):
    import subprocess
    import sys

    from conftest import cli_env

    run = copy_run(straight, tmp_path / "run")
    (run / ".hydra").mkdir(exist_ok=True)
    for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
        (run / ".hydra" / name).write_text(f"# the training run's {name}\n")
    before = snapshot(run)
    proc = subprocess.run([sys.executable, "-m", "adadf.evaluate", f"checkpoint={run / 'checkpoints' / 'best.pt'}",
                           "progress=false", f"hydra.run.dir={run}"], cwd=tmp_path, env=cli_env(cache_dir),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    after = snapshot(run)
    assert {name: after[name] for name in before} == before  # nothing of the run replaced
    (out,) = (run / "eval").iterdir()
    assert (out / "eval_summary.json").is_file() and (out / ".hydra" / "config.yaml").is_file()
    assert "checkpoint:" in (out / ".hydra" / "config.yaml").read_text()


# --------------------------------------------------------------------------- unclear messages
@pytest.mark.parametrize("override, line", [
    ("seed=18446744073709551616", "seed=18446744073709551616: expected an integer in [0, 4294967295]"),
    ("seed=4294967296", "seed=4294967296: expected an integer in [0, 4294967295]"),  # would repeat seed 0
    ("dataset.noise_seed=-1", "dataset.noise_seed=-1: expected an integer >= 0"),
    ("+foo=bar", "foo: unknown key (expected one of seed, name, dataset, backbone, fusion, method, optimizer, "
                 "scheduler, trainer, logger)"),
])
def test_bad_values_name_their_key(tmp_path: Path, cache_dir: Path, override: str, line: str):
    from adadf.errors import UserError

    with pytest.raises(UserError) as err:
        train_here(tmp_path / "run", cache_dir, override)
    assert str(err.value).startswith(line) and "\n" not in str(err.value)


def test_out_of_memory_names_the_batch_size(tmp_path: Path, cache_dir: Path, monkeypatch):
    from adadf.engine import trainer as trainer_module
    from adadf.errors import UserError

    def no_memory(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 411041792 bytes. Error code 12 (Cannot allocate memory)")

    monkeypatch.setattr(trainer_module, "train_one_epoch", no_memory)
    with pytest.raises(UserError) as err:
        train_here(tmp_path / "run", cache_dir, "trainer.epochs=1")
    assert str(err.value).startswith("out of memory on cpu with dataset.batch_size=8 and dataset.image_size=32 (")
    assert str(err.value).endswith("): lower dataset.batch_size or dataset.image_size")
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["error"] == str(err.value)


def test_a_rerun_sweep_reports_its_refused_jobs(run_cli, tmp_path: Path):
    """A killed sweep re-run without trainer.resume=auto: every job is refused (its dir holds a run);
    the table used to count the earlier run's summaries as this run's completed jobs."""
    from conftest import FAST

    sweep_dir = tmp_path / "sweep"
    # trainer.keep_last=true: every job keeps its last.pt, as the jobs of a killed sweep do
    args = ["-m", *FAST, "trainer.epochs=1", "trainer.keep_last=true", "seed=0,1", f"hydra.sweep.dir={sweep_dir}"]
    first = run_cli(args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    again = run_cli(args, cwd=tmp_path)
    assert again.returncode == 1
    assert f"sweep {sweep_dir}: 2 jobs, 0 completed, 2 failed" in again.stdout
    refusal = next(line for line in again.stdout.splitlines() if line.startswith("refused: job 0 ("))
    assert f"seed=0): {sweep_dir / '0'} holds a run" in refusal
    table = pd.read_csv(sweep_dir / "sweep_summary.csv")
    assert table["status"].tolist() == ["refused", "refused"]
    log = again.stdout + again.stderr
    assert "[job 0] job failed: " in log and "[job 1] job failed: " in log  # parallel jobs' lines say whose
    resumed = run_cli([*args[:-1], "trainer.resume=auto", args[-1]], cwd=tmp_path)  # nothing left to do
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert pd.read_csv(sweep_dir / "sweep_summary.csv")["status"].tolist() == ["completed", "completed"]
