"""The comparison methods' recipes (recipe/<experiment>_<method>.yaml), sweep=compare and the
one-line refusals of keys that do not belong to the chosen method (docs/methods.md)."""
from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir

from conftest import CONF, FAST

# The original code's settings where they differ from Ada-DF's (docs/methods.md, "The recipes").
ORIGINAL = {
    "scn": {"lr": 1e-3, "weight_decay": 1e-4, "batch_size": 64, "epochs": 70},
    "rul": {"lr": 2e-4, "weight_decay": 1e-4, "batch_size": 64, "epochs": 60},
    "eac": {"lr": 2e-4, "weight_decay": 1e-4, "batch_size": 32, "epochs": 60},
}


def _settings(cfg) -> dict:
    return {"lr": cfg.optimizer.lr, "weight_decay": cfg.optimizer.weight_decay,
            "batch_size": cfg.dataset.batch_size, "epochs": cfg.trainer.epochs}


@pytest.mark.parametrize("method", sorted(ORIGINAL))
def test_experiment_raf_takes_each_methods_original_settings(compose_cfg, method):
    assert _settings(compose_cfg(["experiment=raf", f"method={method}"])) == pytest.approx(ORIGINAL[method])
    # The recipe is the experiment's: without experiment=raf, or for Ada-DF, nothing changes.
    assert _settings(compose_cfg([f"method={method}"])) == _settings(compose_cfg([]))
    # The command line still wins over the recipe.
    assert compose_cfg(["experiment=raf", f"method={method}", "trainer.epochs=3"]).trainer.epochs == 3


def test_adadf_keeps_the_papers_recipe(compose_cfg):
    raf = compose_cfg(["experiment=raf"])
    assert _settings(raf) == {"lr": 1e-3, "weight_decay": 0.0, "batch_size": 64, "epochs": 75}


def test_sweep_compare_is_six_methods_three_noise_levels_three_seeds():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["sweep=compare"], return_hydra_config=True)
    sweep = cfg.hydra.sweeper.params
    assert sweep["method"].split(",") == ["ce", "ce_full", "scn", "rul", "eac", "adadf"]
    assert [float(x) for x in sweep["dataset.label_noise"].split(",")] == [0.0, 0.2, 0.4]
    assert sweep["seed"] == "range(3)"


@pytest.mark.parametrize("method", sorted(ORIGINAL))
def test_a_fusion_key_with_a_comparison_method_is_one_line(run_cli, tmp_path, method):
    proc = run_cli([*FAST, f"method={method}", "fusion.beta=5", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"fusion.beta=5: method={method} has no Ada-DF fusion")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_another_methods_key_is_one_line(run_cli, tmp_path):
    proc = run_cli([*FAST, "method=adadf", "method.lam=5", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("method.lam: unknown key")
