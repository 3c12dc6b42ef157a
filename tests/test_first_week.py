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


def test_wandb_online_without_a_login_is_one_line_before_any_work(compose_cfg, tmp_path: Path, monkeypatch):
    for var in ("WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setenv("NETRC", str(tmp_path / ".netrc"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    cfg = compose_cfg(["logger=wandb", "logger.mode=online"])
    with pytest.raises(UserError) as err:
        app.preflight(cfg)
    assert str(err.value).startswith("logger.mode=online: no W&B login here; run `wandb login`")
    app.preflight(compose_cfg(["logger=wandb", "logger.mode=offline"]))  # offline needs no login
    monkeypatch.setenv("WANDB_API_KEY", "a" * 40)
    app.preflight(cfg)  # a key: nothing to say
