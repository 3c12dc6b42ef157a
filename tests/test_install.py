"""A non-editable install works: the wheel ships the configs (adadf/conf, the sweeps included), and
every console script runs from a directory that is not the repository.

The wheel is built from the package's own files (pyproject.toml, README.md, adadf/) and installed,
without its dependencies, into a fresh venv that sees this environment's site-packages (torch from
the pinned wheels, hydra, timm, ...), so nothing is downloaded. The repository is not on that venv's
path: ``adadf`` and its configs come from the wheel alone.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import site
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, cli_env

SCRIPTS = ["adadf-train", "adadf-eval", "adadf-predict", "adadf-align", "adadf-convert"]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the adadf wheel installed; returns its bin/ directory."""
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "adadf", src / "adadf", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dist = base / "dist"
    # This environment's setuptools when it has one (nothing to fetch); else pip's isolated build, as `make install`.
    isolation = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *isolation, "-w", str(dist), str(src)],
                   check=True, capture_output=True, text=True, cwd=base)
    [wheel] = dist.glob("adadf-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for config in ("config.yaml", "eval.yaml", "predict.yaml", "align.yaml", "sweep/seeds.yaml",
                   "dataset/synthetic.yaml", "debug/fast.yaml", "__init__.py"):
        assert f"adadf/conf/{config}" in names, f"the wheel lacks adadf/conf/{config}"

    env_dir = base / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    # This environment's packages, after the venv's own: a plain path, so its .pth files (the
    # editable adadf among them) are not run.
    (Path(purelib) / "_adadf_test_deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                   check=True, capture_output=True, text=True, cwd=base)
    return env_dir / "bin"


def run(bin_dir: Path, args: list[str], cwd: Path, cache_dir: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = cli_env(cache_dir)
    env.pop("PYTHONPATH", None)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run([str(bin_dir / args[0]), *args[1:]], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_wheel_install_runs_every_command_from_any_directory(installed: Path, tmp_path: Path, cache_dir: Path):
    work = tmp_path / "elsewhere"
    work.mkdir()

    proc = run(installed, ["python", "-c", "import adadf, adadf.conf; print(adadf.__file__)"], work, cache_dir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert Path(proc.stdout.strip()).is_relative_to(installed.parent), proc.stdout  # the wheel's, not the repo's
    check = run(installed, ["python", "-m", "pip", "check"], work, cache_dir)
    assert not [line for line in check.stdout.splitlines() if line.startswith("adadf ")], check.stdout

    for script in SCRIPTS:
        proc = run(installed, [script, "--help"], work, cache_dir)
        assert proc.returncode == 0 and script in proc.stdout, (script, proc.stdout[-1000:], proc.stderr[-2000:])

    proc = run(installed, ["adadf-train", "--cfg", "job"], work, cache_dir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    cfg = yaml.safe_load(proc.stdout)
    assert cfg["dataset"]["_target_"] == "adadf.data.synthetic.build_synthetic" and cfg["seed"] == 0

    proc = run(installed, ["adadf-train", "sweep=seeds", "--cfg", "hydra"], work, cache_dir)  # the sweep group ships
    assert proc.returncode == 0, proc.stderr[-2000:]
    hydra_cfg = yaml.safe_load(proc.stdout)["hydra"]
    assert hydra_cfg["mode"] == "MULTIRUN" and hydra_cfg["sweeper"]["params"] == {"seed": "range(5)"}

    proc = run(installed, ["adadf-train", "dataset=nope"], work, cache_dir)  # adadf.cli.launch's one line
    assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [
        "In 'config': Could not find 'dataset/nope' (available: affectnet7, affectnet8, folder, raf, sfew, synthetic)"]

    proc = run(installed, ["adadf-train", "debug=fast"], work, cache_dir, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [run_dir] = (work / "outputs").glob("*/*")  # Hydra's default run dir, under the launch directory
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
    for name in ("run.log", "metrics.csv", ".hydra/config.yaml", "checkpoints/best.pt"):
        assert (run_dir / name).is_file(), name

    proc = run(installed, ["adadf-eval", f"checkpoint={run_dir / 'checkpoints' / 'best.pt'}", "dataset.num_workers=0"],
               work, cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert list((work / "outputs" / "eval").glob("*/*/eval_summary.json"))
