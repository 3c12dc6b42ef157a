"""Shared fixtures: Hydra compose API, and `python run.py` in a subprocess into tmp_path."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from adadf.config import register_schemas

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "adadf" / "conf"  # the Hydra configs ship inside the package (pkg://adadf.conf)

register_schemas()  # what every entry point does before Hydra composes

# Tiny tensors gain nothing from a second thread, and busy-waiting threads slow a shared machine.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One synthetic-data cache for the whole session (generation happens once per setting)."""
    return tmp_path_factory.mktemp("adadf-cache")


@pytest.fixture
def compose_cfg():
    """compose_cfg(overrides) -> DictConfig, through Hydra's compose API."""

    def _compose(overrides: list[str] | None = None, config_name: str = "config"):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose(config_name=config_name, overrides=overrides or [])

    return _compose


def cli_env(cache_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["ADADF_CACHE_DIR"] = str(cache_dir)
    env.pop("WANDB_MODE", None)
    env["HYDRA_FULL_ERROR"] = "0"
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


@pytest.fixture
def run_cli(cache_dir: Path):
    """run_cli(args, cwd=...) runs `python run.py args` and returns the CompletedProcess."""

    def _run(args: list[str], cwd: Path, timeout: float = 600, script: str = "run.py") -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, str(ROOT / script), *args],
            cwd=cwd, env=cli_env(cache_dir), capture_output=True, text=True, timeout=timeout,
        )

    return _run


# A tiny, fast run: 1 epoch of 140 images at 32 px.
FAST = ["debug=fast", "dataset.num_workers=0"]
