"""A checkpoint never runs code: every file is loaded with ``weights_only=True``; one that needs full
unpickling is refused in one line naming the file and the opt-in; adadf's own files need none; old
adadf files (adadf-checkpoint-1) are converted once with ``adadf-convert``.
"""
from __future__ import annotations

import json
import logging
import pathlib
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from adadf import inference
from adadf.config import instantiate_node
from adadf.config.schema import LDPass
from adadf.convert import main as convert_main
from adadf.engine.checkpoint import load_checkpoint, set_rng_state
from adadf.errors import UserError
from adadf.evaluate import evaluate_checkpoint
from adadf.predict import predict_command
from conftest import CONF, FAST, ROOT, cli_env
from test_models import resnet_state
from test_resume import TRAINING_STATE, completed_run, assert_same, assert_same_training_state, straight, train_here  # noqa: F401

V2 = "adadf-checkpoint-2"


class Payload:
    """Unpickling this creates ``marker``: what an attacker's ``os.system`` call would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.marker),)


@pytest.fixture
def malicious(tmp_path: Path) -> tuple[Path, Path]:
    """(a checkpoint whose unpickling creates a marker file, that marker's path)."""
    marker = tmp_path / "payload-ran"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": resnet_state(), "epoch": 1, "model": {"trunk.x": torch.zeros(1)},
                "extra": Payload(marker)}, path)
    return path, marker


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cache_dir) -> Path:
    """One epoch with label noise and a validation split, so the history holds every metric."""
    return completed_run(tmp_path_factory, cache_dir, "trained", "trainer.epochs=1", "dataset.label_noise=0.25",
                         "dataset.val_fraction=0.25")


@pytest.fixture(scope="module")
def epoch1(tmp_path_factory, cache_dir) -> Path:
    """The first epoch of ``straight`` (test_resume), as a run dir to resume."""
    return completed_run(tmp_path_factory, cache_dir, "epoch1", "trainer.epochs=1")


def run_command(args: list[str], cwd: Path, cache_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, env=cli_env(cache_dir), capture_output=True,
                          text=True, timeout=600)


def compose_command(name: str, overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(name, overrides=overrides)


# ------------------------------------------------------------------- 1. adadf's own files: weights only
def test_adadf_checkpoints_load_with_weights_only(trained: Path):
    for name in ("last.pt", "best.pt"):
        path = trained / "checkpoints" / name
        assert torch.serialization.get_unsafe_globals_in_checkpoint(path) == [], name
        state = torch.load(path, map_location="cpu", weights_only=True)
        assert state["format"] == V2
        assert "noise_auroc" in state["progress"]["history"][0] and "val_acc" in state["progress"]["history"][0]
    last = load_checkpoint(trained / "checkpoints" / "last.pt")
    assert {"optimizer", "scheduler", "scaler", "method", "progress", "config", "rng"} <= set(last)
    json.dumps({"python": last["rng"]["python"], "numpy": last["rng"]["numpy"]})  # plain values, no objects


@pytest.mark.parametrize("overrides", [
    ["optimizer=sgd", "scheduler=cosine", "method=ce"],
    ["optimizer=adamw", "scheduler=none", "method=adadf_static_class_dist", "fusion.ld_pass=clean"],
    ["optimizer=adam", "scheduler=exponential", "method=adadf_fixed_fusion"],
])
def test_every_optimizer_scheduler_and_method_saves_plain_values(overrides, tmp_path: Path, cache_dir: Path):
    assert train_here(tmp_path, cache_dir, "trainer.epochs=1", *overrides)["status"] == "completed"
    for name in ("last.pt", "best.pt"):
        assert torch.serialization.get_unsafe_globals_in_checkpoint(tmp_path / "checkpoints" / name) == [], name


def test_rng_state_round_trips_bit_exactly():
    from adadf.engine.checkpoint import rng_state

    random.seed(3), np.random.seed(4), torch.manual_seed(5)
    random.gauss(0, 1), np.random.standard_normal()  # a cached Gaussian on each side
    saved = rng_state()
    expected = (random.random(), random.gauss(0, 1), np.random.random(), np.random.standard_normal(), torch.rand(3))
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    set_rng_state(json.loads(json.dumps({k: saved[k] for k in ("python", "numpy")})) | {"torch": saved["torch"]})
    again = (random.random(), random.gauss(0, 1), np.random.random(), np.random.standard_normal(), torch.rand(3))
    assert expected[:4] == again[:4] and torch.equal(expected[4], again[4])


def test_fresh_best_pt_loads_without_a_warning(trained: Path, caplog):
    best = trained / "checkpoints" / "best.pt"
    with caplog.at_level(logging.INFO):
        checkpoint = inference.read_checkpoint(best)
        cfg = compose_command("config", ["backbone.checkpoint=" + str(best)])
        instantiate_node(cfg.backbone, "backbone", num_classes=7)
    assert checkpoint.format == "adadf"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert "weights_only=False" not in caplog.text


# -------------------------------------------------------------- 2. a foreign pickle never runs
def entry_point(kind: str, bad: Path, tmp_path: Path) -> tuple[list[str], str | None]:
    """(the command line that reads ``bad``, the opt-in its refusal must name)."""
    out = f"hydra.run.dir={tmp_path / 'out'}"
    return {
        "eval": (["-m", "adadf.evaluate", f"checkpoint={bad}", out], "allow_pickle=true"),
        "predict": (["-m", "adadf.predict", f"checkpoint={bad}", f"input={tmp_path}", out], "allow_pickle=true"),
        "backbone": ([str(ROOT / "run.py"), *FAST, f"backbone.checkpoint={bad}", out], "backbone.allow_pickle=true"),
        "resume": ([str(ROOT / "run.py"), *FAST, f"trainer.resume={bad}", out], None),
    }[kind]


@pytest.mark.parametrize("kind", ["eval", "predict", "backbone", "resume"])
def test_a_malicious_checkpoint_is_refused_without_running(kind: str, malicious, tmp_path: Path, cache_dir: Path):
    bad, marker = malicious
    args, opt_in = entry_point(kind, bad, tmp_path)
    proc = run_command(args, tmp_path, cache_dir)
    assert not marker.exists(), "the payload ran"
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if str(bad) in line]
    assert len(lines) == 1, proc.stderr[-3000:]
    line = lines[0]
    assert "pathlib" in line and "runs any code the file contains" in line  # what it needs, what that means
    if opt_in is None:  # resuming takes adadf's own files only: no way to unpickle there
        assert "allow_pickle" not in line and "expected a checkpoint adadf wrote" in line
    else:
        assert line.endswith(f"only for a file you trust, pass {opt_in}")


def test_the_converter_refuses_a_malicious_file(malicious, capsys):
    bad, marker = malicious
    before = bad.read_bytes()
    assert convert_main([str(bad)]) == 1
    assert not marker.exists(), "the payload ran"
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(bad) in err and "pathlib" in err and "nothing unpickled" in err
    assert bad.read_bytes() == before and not bad.with_name("evil.pt.bak").exists()


# ----------------------------------------------------------- 3. the opt-in loads a trusted file
def test_backbone_allow_pickle_loads_a_trusted_third_party_file(tmp_path: Path):
    resnet = resnet_state()
    path = tmp_path / "msceleb_resnet18.pth"
    torch.save({"state_dict": resnet, "mean": np.array([0.5, 0.5, 0.5])}, path)  # numpy: needs unpickling
    with pytest.raises(UserError) as err:
        instantiate_node(compose_command("config", [f"backbone.checkpoint={path}"]).backbone, "backbone", num_classes=7)
    assert str(err.value).startswith(f"{path}: refused: it holds numpy.")
    assert str(err.value).endswith("pass backbone.allow_pickle=true")
    cfg = compose_command("config", [f"backbone.checkpoint={path}", "backbone.allow_pickle=true"])
    model = instantiate_node(cfg.backbone, "backbone", num_classes=7)
    assert torch.equal(model.trunk.state_dict()["conv1.weight"], resnet["conv1.weight"])


def test_eval_and_predict_allow_pickle_load_a_trusted_file(trained: Path, tmp_path: Path, cache_dir: Path):
    best = torch.load(trained / "checkpoints" / "best.pt", weights_only=True)
    path = tmp_path / "annotated.pt"
    torch.save({**best, "note": np.float64(1.0)}, path)  # e.g. someone's numpy scalar
    with pytest.raises(UserError, match=r"annotated.pt: refused: it holds numpy.*pass allow_pickle=true$"):
        evaluate_checkpoint(compose_command("eval", [f"checkpoint={path}", "device=cpu"]), tmp_path / "refused")
    summary = evaluate_checkpoint(compose_command("eval", [f"checkpoint={path}", "allow_pickle=true", "device=cpu",
                                                           "progress=false"]), tmp_path / "eval")
    assert summary["format"] == "adadf"
    image = tmp_path / "face.png"
    from PIL import Image
    Image.new("RGB", (32, 32), (120, 80, 60)).save(image)
    cfg = compose_command("predict", [f"checkpoint={path}", f"input={image}", "allow_pickle=true", "device=cpu",
                                      "faces=none"])
    predict_command(cfg, tmp_path / "predict")
    assert (tmp_path / "predict" / "predictions.csv").is_file()


# ---------------------------------------------------------------- 4. old adadf files: converted once
def old_format(state: dict) -> dict:
    """What adadf-checkpoint-1 wrote for the same state: the raw ``random.getstate()`` and
    ``np.random.get_state()`` (a uint32 array) and the config's LDPass enum."""
    old = dict(state, format="adadf-checkpoint-1")
    if "rng" in state:
        set_rng_state(state["rng"])
        old["rng"] = {**state["rng"], "python": random.getstate(), "numpy": np.random.get_state()}
    fusion = state["config"]["fusion"]
    old["config"] = {**state["config"], "fusion": {**fusion, "ld_pass": LDPass(fusion["ld_pass"])}}
    return old


def test_old_checkpoints_name_the_converter_which_round_trips_them(epoch1: Path, tmp_path: Path, capsys):
    for name in ("last.pt", "best.pt"):
        new = load_checkpoint(epoch1 / "checkpoints" / name)
        old_path = tmp_path / name
        torch.save(old_format(new), old_path)
        assert torch.serialization.get_unsafe_globals_in_checkpoint(old_path)  # needs unpickling, as format 1 did
        for read in (load_checkpoint, inference.read_checkpoint):
            with pytest.raises(UserError) as err:
                read(old_path)
            assert str(err.value).endswith(f"convert it once with `adadf-convert {old_path}`")

        assert convert_main([str(old_path), str(tmp_path / f"new-{name}")]) == 0
        assert "weights_only=False (full unpickling) because you asked" in capsys.readouterr().err
        converted = torch.load(tmp_path / f"new-{name}", weights_only=True)
        assert_same(converted, new)  # bit for bit what format 2 writes, the RNG state included

    assert convert_main([str(tmp_path / "new-last.pt")]) == 0  # already converted: nothing to do
    assert "already adadf-checkpoint-2" in capsys.readouterr().out


def test_a_converted_checkpoint_resumes_exactly(straight: Path, epoch1: Path, tmp_path: Path, cache_dir: Path):
    run = tmp_path / "run"
    shutil.copytree(epoch1, run)
    last = run / "checkpoints" / "last.pt"
    original = last.read_bytes()
    torch.save(old_format(load_checkpoint(last)), last)
    old = last.read_bytes()
    with pytest.raises(UserError, match=rf"convert it once with `adadf-convert {last}`"):
        train_here(run, cache_dir, "trainer.epochs=2", "trainer.resume=auto")

    proc = run_command(["-m", "adadf.convert", str(last)], tmp_path, cache_dir)  # in place, with a backup
    assert proc.returncode == 0, proc.stderr
    assert last.with_name("last.pt.bak").read_bytes() == old and last.read_bytes() != original
    assert train_here(run, cache_dir, "trainer.epochs=2", "trainer.resume=auto")["epochs_completed"] == 2
    assert_same_training_state(straight / "checkpoints" / "last.pt", last)

    again = run_command(["-m", "adadf.convert", str(tmp_path / "missing.pt")], tmp_path, cache_dir)
    missing = tmp_path / "missing.pt"
    assert again.returncode == 1 and again.stderr.strip() == f"adadf-convert: {missing}: checkpoint file not found"


def test_converter_help(capsys):
    with pytest.raises(SystemExit) as exit_:
        convert_main(["--help"])
    assert exit_.value.code == 0 and "weights_only=True" in capsys.readouterr().out
