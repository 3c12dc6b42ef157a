"""Pictures: each plot function writes a PNG, and a sweep's summary draws its two."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from adadf.tracking import plots
from adadf.tracking.sweep import ACCURACY_PNG, CURVES_PNG, learning_curves, summarize_sweep


def assert_png(path: Path, min_side: int = 100) -> None:
    assert path.is_file() and path.stat().st_size > 1000, path
    with Image.open(path) as image:
        assert image.format == "PNG" and min(image.size) >= min_side
        pixels = np.asarray(image.convert("L"))
    assert pixels.std() > 1.0, f"{path} is blank"


def test_run_pictures(tmp_path: Path):
    names = ["a", "b", "c"]
    assert_png(plots.class_distribution_heatmap(np.eye(3) * 0.7 + 0.1, names, tmp_path / "m.png", "LD"))
    attention = np.r_[np.linspace(0.2, 0.9, 50), np.nan]
    flipped = np.r_[np.zeros(40, bool), np.ones(11, bool)]
    assert_png(plots.attention_histogram(attention, flipped, tmp_path / "h.png"))
    assert_png(plots.attention_histogram(attention, None, tmp_path / "h0.png"))
    images = [np.full((16, 16, 3), 40 * i, np.uint8) for i in range(5)]
    assert_png(plots.image_grid(images, [f"img {i}" for i in range(5)], tmp_path / "g.png", "grid"))


def fake_sweep(root: Path) -> Path:
    """Two settings x two seeds, with per-epoch test accuracies, as Hydra and adadf leave them."""
    sweep = root / "sweep"
    job = 0
    for method, level in (("ce", 40.0), ("adadf", 50.0)):
        for seed in (0, 1):
            d = sweep / str(job)
            (d / ".hydra").mkdir(parents=True)
            (d / ".hydra" / "overrides.yaml").write_text(f"- method={method}\n- seed={seed}\n")
            acc = [level - 10 + seed, level + seed, level + 2 + seed]
            pd.DataFrame({"epoch": [1, 2, 3], "test_acc": acc}).to_csv(d / "metrics.csv", index=False)
            (d / "summary.json").write_text(json.dumps({"status": "completed", "best_acc": max(acc),
                                                        "final_acc": acc[-1], "best_epoch": 3}))
            job += 1
    return sweep


def test_sweep_summary_writes_accuracy_and_curve_pngs(tmp_path: Path):
    sweep = fake_sweep(tmp_path)
    summarize_sweep(sweep, echo=False)
    assert_png(sweep / ACCURACY_PNG)
    assert_png(sweep / CURVES_PNG)
    curves = learning_curves(sweep, pd.read_csv(sweep / "sweep_summary.csv"))
    epochs, mean, std = curves["method=adadf"]
    assert epochs.tolist() == [1, 2, 3]
    assert mean.tolist() == [40.5, 50.5, 52.5]
    assert np.allclose(std, np.std([[40, 41], [50, 51], [52, 53]], axis=1, ddof=1))
