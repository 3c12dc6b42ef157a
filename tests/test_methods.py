"""The ``method`` group: a new method is one module + one YAML, and the loop logs its terms."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import FAST, ROOT, cli_env

PLUGINS = Path(__file__).parent / "plugins"


def test_a_new_method_is_one_module_and_one_yaml(cache_dir, tmp_path):
    """tests/plugins holds tiny_method.py and conf/method/tiny.yaml; nothing in adadf/ (or adadf/conf/) knows it."""
    env = cli_env(cache_dir)
    env["PYTHONPATH"] = os.pathsep.join([str(PLUGINS), env.get("PYTHONPATH", "")])
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), *FAST, "method=tiny", f"hydra.searchpath=[file://{PLUGINS / 'conf'}]",
         "trainer.epochs=2", f"hydra.run.dir={out}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = pd.read_csv(out / "metrics.csv")
    # The loop logged whatever scalar terms the method returned, and nothing of Ada-DF's.
    assert {"train_loss", "train_ce", "train_attention_mean"} <= set(metrics.columns)
    assert not {"train_kl", "train_rr", "w_ce"} & set(metrics.columns)
    # loss = weight * ce, averaged over the same rows.
    for loss, ce in zip(metrics["train_loss"], metrics["train_ce"]):
        assert loss == pytest.approx(2.0 * ce, rel=1e-9)
    # The method's state went into the checkpoint: one count per training batch (140 images / 16).
    state = torch.load(out / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
    assert int(state["method"]["steps"]) == 2 * (140 // 16)
    assert "_target_: tiny_method.TinyCrossEntropy" in (out / ".hydra" / "config.yaml").read_text()


def test_a_method_that_does_not_fit_the_network_is_one_line(cache_dir, tmp_path):
    """A method training parts the network lacks: one line naming them and the parts there are."""
    env = cli_env(cache_dir)
    env["PYTHONPATH"] = os.pathsep.join([str(PLUGINS), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), *FAST, "method=tiny", "method._target_=tiny_method.HeadOnly",
         f"hydra.searchpath=[file://{PLUGINS / 'conf'}]", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert ("method (HeadOnly) trains head, which the AdaDF network does not have as a trainable part "
            "(it has: aux_attention, aux_branch, target_attention, target_branch)") in proc.stderr.splitlines()
    assert not (tmp_path / "run" / "checkpoints" / "last.pt").exists()
