"""Pictures: each plot function writes a PNG, and a sweep's summary draws its two."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
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


@pytest.fixture
def drawn(monkeypatch) -> dict[str, Any]:
    """The figures the plot functions save, by file name: what a picture shows, checked."""
    figures: dict[str, Any] = {}
    save = plots._save

    def keep(fig, path):
        figures[Path(path).name] = fig
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", keep)
    return figures


def test_class_distribution_heatmap_marks_the_rows_that_fell_back(tmp_path: Path, drawn):
    names = ["a", "b", "c"]
    assert_png(plots.class_distribution_heatmap(np.eye(3) * 0.7 + 0.1, names, tmp_path / "m.png", "LD",
                                                fallback=[False, True, False]))
    ax = drawn["m.png"].axes[0]
    colours = [label.get_color() for label in ax.get_yticklabels()]
    assert colours[1] == "red" and colours[0] != "red" and colours[2] != "red"
    (frame,) = [p for p in ax.patches if not p.get_fill()]
    assert frame.get_xy() == (-0.5, 0.5) and frame.get_height() == 1  # row b
    assert "1 class fell back" in ax.get_title()


def test_attention_histogram_is_a_density_over_0_1(tmp_path: Path, drawn):
    attention = np.r_[np.linspace(0.2, 0.6, 40), np.linspace(0.5, 0.9, 10), np.nan]
    flipped = np.r_[np.zeros(40, bool), np.ones(11, bool)]
    plots.attention_histogram(attention, flipped, tmp_path / "h.png", title="attention (noise AUROC 90.0%)")
    ax = drawn["h.png"].axes[0]
    assert ax.get_xlim() == (0.0, 1.0)  # the same axes every epoch
    for bars in ax.containers:  # clean and flipped: each integrates to 1 though 40 vs 10 images
        assert sum(b.get_height() * b.get_width() for b in bars) == pytest.approx(1.0)
    assert ax.get_ylabel() == "density"


def sweep_with_classes(root: Path, epochs: int, seeds: dict[str, tuple[int, ...]], classes: int = 7) -> Path:
    """Jobs as adadf leaves them, summaries with ``best_per_class_acc`` over ``classes`` classes."""
    sweep, job = root / "sweep", 0
    for method, method_seeds in seeds.items():
        for seed in method_seeds:
            d = sweep / str(job)
            (d / ".hydra").mkdir(parents=True)
            (d / ".hydra" / "overrides.yaml").write_text(f"- method={method}\n- seed={seed}\n")
            acc = [40.0 + 5 * e + seed for e in range(epochs)]
            pd.DataFrame({"epoch": range(1, epochs + 1), "test_acc": acc}).to_csv(d / "metrics.csv", index=False)
            (d / "summary.json").write_text(json.dumps({
                "status": "completed", "best_acc": max(acc), "final_acc": acc[-1], "best_epoch": epochs,
                "best_per_class_acc": {f"class{i}": 50.0 for i in range(classes)}}))
            job += 1
    return sweep


def test_sweep_accuracy_has_chance_a_dot_per_job_and_no_error_bar_for_one_seed(tmp_path: Path, drawn):
    sweep = sweep_with_classes(tmp_path, 2, {"ce": (0, 1, 2), "adadf": (0,)})
    summarize_sweep(sweep, echo=False)
    ax = drawn[ACCURACY_PNG].axes[0]
    chance = [line for line in ax.lines if line.get_linestyle() == "--"]
    assert len(chance) == 1 and chance[0].get_ydata()[0] == pytest.approx(100 / 7)
    dots = [line for line in ax.lines if line.get_marker() == "o"]
    assert sorted(np.concatenate([d.get_ydata() for d in dots]).tolist()) == [45.0, 45.0, 46.0, 47.0]
    segments = [s for c in ax.collections for s in c.get_segments()]
    assert len(segments) == 1  # ce's three seeds; adadf's one seed has no error bar


def test_sweep_curves_readable_with_one_epoch(tmp_path: Path, drawn):
    sweep = sweep_with_classes(tmp_path, 1, {"ce": (0, 1), "adadf": (0, 1)})
    summarize_sweep(sweep, echo=False)
    ax = drawn[CURVES_PNG].axes[0]
    assert ax.get_xlim() == (0.0, 2.0)  # epoch 1 in the middle
    points = [line for line in ax.lines if line.get_marker() == "o"]
    assert len(points) == 2 and all(line.get_markersize() >= 5 for line in points)
    assert len(ax.containers) == 2  # a ± std bar per setting, where a band of one point draws nothing
