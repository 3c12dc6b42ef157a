"""benchmarks/gpu_check.py --quick runs on the CPU (as CI runs it) and writes every figure.

No timing is asserted (figures belong in benchmarks/RESULTS.md): only that each part ran and its
figures are positive numbers in the right places.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

from conftest import ROOT


def test_gpu_check_quick_writes_its_json(tmp_path: Path):
    out = tmp_path / "check.json"
    env_cache = tmp_path / "cache"
    proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--quick", "--json", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "ADADF_CACHE_DIR": str(env_cache)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["quick"] is True and r["machine"]["cores"] >= 1 and r["machine"]["torch"]
    cuda = r["gpus"] > 0
    assert r["default_pipeline"] == ("device" if cuda else "reference")  # what dataset.pipeline=auto runs

    tests = r["cuda_tests"]
    assert tests["returncode"] == 0 and tests["failed"] == 0 and tests["errors"] == 0
    assert tests["passed" if cuda else "skipped"] >= 3  # the CUDA-only tests were found (and skip on the CPU)

    assert set(r["throughput"]) == {"fp32", "amp_bf16_channels_last"}
    for precision, res in r["throughput"].items():
        assert set(res["pipelines"]) == {"device", "small_first", "reference"}
        overrides = res["machine"]["overrides"]
        assert ("trainer.amp=true" in overrides) == (precision != "fp32")
        for name, p in res["pipelines"].items():
            for key in ("model_images_per_s", "e2e_images_per_s", "e2e_over_model", "ld_pass_images_per_s",
                        "eval_images_per_s", "e2e_peak_mem_mb"):
                assert math.isfinite(p[key]) and p[key] > 0, (precision, name, key, p[key])
    assert r["peak_memory_mb"] > 0

    raf = r["raf_run"]
    assert raf["returncode"] == 0 and raf["status"] == "completed" and raf["epochs"] == 3
    assert raf["pipeline"] == r["default_pipeline"] == r["auto_pipeline"]  # the run's log names what auto picked
    assert all(t > 0 for t in raf["epoch_time_s"])
    assert raf["steady_epoch_s"] == sum(raf["epoch_time_s"][1:]) / 2
    assert raf["projected_75_epochs_s"] == raf["epoch_time_s"][0] + 74 * raf["steady_epoch_s"]
    assert f"| {r['auto_pipeline']} |" in r["markdown_row"]
    assert ("skipped" in r["raf_epochs"]) == (not cuda)
    ops = r["aug_ops"]  # the device recipe's launch count: the same at both batch sizes
    assert set(ops) == {"64", "256"} and ops["64"]["top_level"] == ops["256"]["top_level"] > 0
    assert "experiment=raf" in raf["command"] and "backbone.checkpoint=null" in raf["command"]
    assert ("skipped" in r["torchrun"]) == (r["gpus"] < 2)

    step = r["step"]  # the step alone: eager vs captured (CUDA graphs: CUDA only), fp32 vs bf16 + channels_last
    assert set(step) == {"eager_fp32", "eager_bf16_channels_last", "captured_fp32", "captured_bf16_channels_last"}
    for name, v in step.items():
        if name.startswith("captured") and not cuda:
            assert "skipped" in v
            continue
        for key in ("train_images_per_s", "ld_pass_images_per_s", "eval_images_per_s", "eval_4x_batch_images_per_s"):
            assert math.isfinite(v[key]) and v[key] > 0, (name, key, v)
        assert v["eval_4x_batch_same_predictions"] in (True, False)
        assert v["amp_resolved"] == ("bfloat16" if "bf16" in name else False)
    assert isinstance(r["step_verdict"]["amp_faster"], bool)
    assert ("captured_faster" in r["step_verdict"]) == cuda

    row = out.with_suffix(".md").read_text().splitlines()
    assert row[0].startswith("| date |") and row[2] == r["markdown_row"]
    assert row[2].count("|") == row[0].count("|")  # one cell per column
    assert "RESULTS.md row" in proc.stdout and "CUDA-only tests" in proc.stdout
