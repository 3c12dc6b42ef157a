"""A user's first week (issue 19): what is wrong is said before any work, in one line naming the key."""
from __future__ import annotations

from pathlib import Path

import pytest

from adadf import app
from adadf.errors import UserError

from test_resume import train_here


def test_missing_backbone_file_is_named_before_any_work(tmp_path: Path, cache_dir: Path, monkeypatch):
    monkeypatch.setattr(app, "build_data", lambda *a, **k: pytest.fail("the data were built before the check"))
    with pytest.raises(UserError) as err:
        train_here(tmp_path / "run", cache_dir, "backbone.checkpoint=checkpoints/resnet18_msceleb.pth")
    line = str(err.value)
    assert line.startswith("backbone.checkpoint=checkpoints/resnet18_msceleb.pth: no file at ")
    assert "docs/datasets.md" in line and line.endswith("backbone.checkpoint=null trains from scratch")


PREFLIGHT = """
import sys
from hydra import compose, initialize_config_dir
from adadf import app
from adadf.config import register_schemas
from adadf.errors import UserError
register_schemas()
with initialize_config_dir(config_dir=sys.argv[1], version_base="1.3"):
    cfg = compose("config", overrides=sys.argv[2:])
try:
    app.preflight(cfg)
except UserError as err:
    print(err)
"""


def test_wandb_online_without_a_login_is_one_line_before_any_work(tmp_path: Path):
    """In subprocesses (wandb keeps what it found for the rest of a process); the check reads the key's
    places itself, never waiting on W&B's service or server."""
    import os
    import subprocess
    import sys

    from conftest import CONF

    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_API_KEY", "WANDB_BASE_URL")}
    env |= {"HOME": str(tmp_path), "NETRC": str(tmp_path / ".netrc"), "WANDB_CONFIG_DIR": str(tmp_path / "wandb")}

    def preflight(*overrides: str, **extra: str) -> str:
        proc = subprocess.run([sys.executable, "-c", PREFLIGHT, str(CONF), *overrides], env={**env, **extra},
                              capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc.stdout.strip()

    online = ("logger=wandb", "logger.mode=online")
    assert preflight(*online).startswith("logger.mode=online: no W&B login here; run `wandb login`")
    assert preflight("logger=wandb", "logger.mode=offline") == ""  # offline needs no login
    assert preflight(*online, WANDB_API_KEY="a" * 40) == ""  # a key: nothing to say
    # `wandb login` writes ~/.netrc: an entry for W&B's host is a login, one for another host is not.
    (tmp_path / ".netrc").write_text("machine example.org login user password " + "b" * 40 + "\n")
    assert preflight(*online).startswith("logger.mode=online: no W&B login here")
    (tmp_path / ".netrc").write_text("machine wandb.example.org login user password " + "b" * 40 + "\n")
    assert preflight(*online, WANDB_BASE_URL="https://wandb.example.org") == ""


@pytest.mark.parametrize("config, override, line", [
    ("config", "trainer.foo=1", "trainer.foo: unknown key (expected one of epochs, device, "),
    ("config", "foo=1", "foo: unknown key (expected one of seed, name, dataset, backbone, fusion, method, "
                        "optimizer, scheduler, trainer, logger; to add a new key, use a leading +: +foo=...)"),
    ("eval", "dataset.verify_images=exists", "dataset.verify_images: unknown key (expected one of root, batch_size, "
                                             "num_workers, image_size; to add a new key, use a leading +: "
                                             "+dataset.verify_images=...)"),
    ("predict", "tta_x=1", "tta_x: unknown key (expected one of checkpoint, "),
])
def test_every_command_says_unknown_keys_the_same_way(config: str, override: str, line: str):
    """adadf-eval and adadf-predict printed raw OmegaConf (``'tta_x'.: Key 'tta_x' is not in struct``)."""
    from hydra import compose, initialize_config_dir

    from adadf.cli import one_line
    from conftest import CONF

    with pytest.raises(Exception) as err:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            compose(config, overrides=[override])
    assert one_line(err.value).startswith(line)


def test_a_run_resumed_into_a_new_dir_is_whole(tmp_path: Path, cache_dir: Path, caplog):
    import logging

    from adadf.engine.checkpoint import load_checkpoint

    old = tmp_path / "old"
    train_here(old, cache_dir, "trainer.epochs=1")
    new = tmp_path / "new"
    with caplog.at_level(logging.INFO):
        summary = train_here(new, cache_dir, "trainer.epochs=1", f"trainer.resume={old / 'checkpoints' / 'last.pt'}")
    assert summary["status"] == "completed" and summary["epochs_completed"] == 1
    assert load_checkpoint(new / "checkpoints" / "best.pt")["epoch"] == 1  # adadf-eval finds it
    assert f"nothing to do: {new} is already at epoch 1 (trainer.epochs=1); pass a larger trainer.epochs" \
        in caplog.text


def test_progress_bars_only_on_a_terminal(capsys):
    """align/predict drew carriage-return progress bars into log files and pipes."""
    from adadf.threads import threaded_map

    assert list(threaded_map(str, range(5), 2, desc="predict", progress=True)) == ["0", "1", "2", "3", "4"]
    assert "\r" not in capsys.readouterr().err  # pytest's capture is no terminal


def test_numbers_as_people_read_them():
    """Mean-class accuracy came out in float32 (58.999996185302734 beside 59.0); "1 faces", "1 jobs";
    eval_summary.json named the dataset by its builder's import path."""
    import torch

    from adadf.config.dataset import dataset_name
    from adadf.engine.loop import summarize_confusion
    from adadf.words import counted

    result = summarize_confusion(torch.tensor([[59, 41, 0], [0, 383, 317], [0, 0, 0]]))
    assert result.acc == 100 * 442 / 800 and result.per_class_acc[:2] == [59.0, 100 * 383 / 700]
    assert result.mean_class_acc == (59.0 + 100 * 383 / 700) / 2  # float64 throughout
    assert (counted(1, "face"), counted(2, "face"), counted(0, "job")) == ("1 face", "2 faces", "0 jobs")
    assert dataset_name({"_target_": "adadf.data.synthetic.build_synthetic", "num_classes": 7}) == "synthetic"
    assert dataset_name({"_target_": "adadf.data.affectnet.build_affectnet", "num_classes": 8}) == "affectnet8"


def test_checkpoint_policy_and_disk_use(tmp_path: Path, cache_dir: Path, monkeypatch):
    """A completed run says how much it left on disk; trainer.keep_last drops last.pt (optimizer state,
    ~3x best.pt) where it is no longer needed: auto for a sweep's jobs, false for any run."""
    import json

    kept = tmp_path / "kept"
    summary = train_here(kept, cache_dir, "trainer.epochs=1")
    last = kept / "checkpoints" / "last.pt"
    assert last.is_file()  # auto outside a sweep: the run can be extended with trainer.resume=auto
    on_disk = sum(p.stat().st_size for p in kept.rglob("*") if p.is_file() and p.name != "summary.json")
    assert summary["disk_mb"] == pytest.approx(on_disk / 2**20, abs=0.2)
    assert json.loads((kept / "summary.json").read_text())["disk_mb"] == summary["disk_mb"]

    dropped = tmp_path / "dropped"
    summary = train_here(dropped, cache_dir, "trainer.epochs=1", "trainer.keep_last=false")
    assert not (dropped / "checkpoints" / "last.pt").exists() and (dropped / "checkpoints" / "best.pt").is_file()
    assert summary["disk_mb"] < json.loads((kept / "summary.json").read_text())["disk_mb"] - last.stat().st_size / 2**21

    monkeypatch.setattr(app, "in_multirun", lambda: True)  # auto in a sweep's job
    from adadf import task

    files = task.RunFiles(kept)
    task.apply_keep_last("auto", files)
    assert not last.exists()
