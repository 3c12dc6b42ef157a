"""benchmarks/throughput.py runs end to end on a tiny RAF-DB layout and reports every figure.

No timing is asserted (timings belong in benchmarks/RESULTS.md); only that each figure exists and
is a positive number.
"""
from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import fakedata
from conftest import ROOT


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("throughput", ROOT / "benchmarks" / "throughput.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_throughput_benchmark_reports_every_figure(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setenv("ADADF_CACHE_DIR", str(tmp_path / "cache"))
    root = fakedata.write_raf(tmp_path / "raf", per_class=3, size=40, test_per_class=2)
    bench = _load_benchmark()
    out = tmp_path / "figures.json"
    results = bench.main(["--root", str(root), "--batches", "2", "--input-batches", "2", "--workers", "0",
                          "--json", str(out), "--", "dataset.image_size=32", "dataset.batch_size=4"])
    assert json.loads(out.read_text())["pipelines"].keys() == {"device", "small_first", "reference"}
    for name, figures in results["pipelines"].items():
        for key in ("input_images_per_s", "input_images_per_core_s", "model_images_per_s", "e2e_images_per_s",
                    "e2e_over_model", "ld_pass_epoch_s", "eval_epoch_s", "epoch_s_est", "e2e_peak_mem_mb"):
            assert math.isfinite(figures[key]) and figures[key] > 0, (name, key, figures[key])
        assert figures["train_batches_per_epoch"] == 21 // 4
    machine = results["machine"]
    assert machine["cores"] >= 1 and machine["torch"] and len(machine["load_avg_1_5_15"]) == 3
    printed = capsys.readouterr().out
    assert "small_first / reference input throughput per core used" in printed
    assert "device / reference input throughput per core used" in printed


def test_synthetic_raf_writer(tmp_path: Path):
    bench = _load_benchmark()
    root = bench.write_synthetic_raf(tmp_path / "raf", train=14, test=7, size=40)
    from adadf.data.raf import read_raf

    train, test = read_raf(root)
    assert (len(train), len(test)) == (14, 7)
    from PIL import Image

    with Image.open(train.absolute(0)) as image:
        assert image.size == (40, 40) and image.format == "JPEG"
    assert bench.write_synthetic_raf(tmp_path / "raf", train=14, test=7, size=40) == root  # reused


def test_pipeline_steps_benchmark(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setenv("ADADF_CACHE_DIR", str(tmp_path / "cache"))
    spec = importlib.util.spec_from_file_location("pipeline_steps", ROOT / "benchmarks" / "pipeline_steps.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    steps = module.main(["--train", "14", "--test", "7", "--batches", "1", "--batch-size", "4"])
    assert len(steps) == 9 and all(math.isfinite(ms) for ms in steps.values())
    assert steps["total"] > 0 and steps["device_total"] > 0
    assert "img/core-s" in capsys.readouterr().out


def test_eval_forward_benchmark_times_both_modes(tmp_path: Path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "eval_forward.py"), "--batch", "2",
                           "--size", "32", "--reps", "1"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rates = {line.split(":")[0].strip(): float(line.split(":")[1].split()[0])
             for line in proc.stdout.splitlines() if line.strip().endswith("img/s")}
    assert rates.keys() == {"both branches", "target only"} and all(r > 0 for r in rates.values()), proc.stdout
    assert proc.stdout.splitlines()[-1].startswith("ratio: ")
