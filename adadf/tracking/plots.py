"""Pictures of what a run and a sweep did, as PNG files (matplotlib's ``Figure`` with its Agg
canvas: no pyplot, so no global state and no display).

Each function takes plain arrays, writes one PNG atomically and returns its path.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from adadf.atomic import atomic_path


def _figure(width: float, height: float, layout: str | None = None):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout=layout)


def _save(fig, path: Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, bbox_inches="tight", format="png")
    return path


def matrix_heatmap(colours: np.ndarray, texts: Sequence[Sequence[str]], class_names: Sequence[str], path: Path, *,
                   cmap: str, vmax: float, xlabel: str, ylabel: str, colorbar_label: str = "",
                   title: str = "") -> Path:
    """A C x C matrix over the classes: cells coloured by ``colours``, ``texts`` printed in them
    (dark text on light cells, light on dark)."""
    colours = np.asarray(colours, dtype=float)
    size = 1.0 + 0.55 * len(class_names)
    fig = _figure(size + 1.2, size)
    ax = fig.subplots()
    im = ax.imshow(colours, cmap=cmap, vmin=0.0, vmax=vmax)
    ticks = range(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=45, ha="right")
    ax.set_yticks(ticks, class_names)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    for i, row in enumerate(texts):
        for j, text in enumerate(row):
            r, g, b, _ = im.cmap(im.norm(colours[i, j]))
            ax.text(j, i, text, ha="center", va="center", fontsize=7,
                    color="black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white")
    fig.colorbar(im, ax=ax, fraction=0.046, label=colorbar_label)
    ax.set_title(title)
    return _save(fig, path)


def class_distribution_heatmap(matrix: np.ndarray, class_names: Sequence[str], path: Path, title: str = "") -> Path:
    """The C x C class-distribution matrix (row i: the distribution for class i), values printed."""
    matrix = np.asarray(matrix, dtype=float)
    return matrix_heatmap(matrix, [[f"{v:.2f}" for v in row] for row in matrix], class_names, path,
                          cmap="viridis", vmax=max(1.0, float(matrix.max())), xlabel="distribution over classes",
                          ylabel="label", title=title)


def confusion_heatmap(confusion: np.ndarray, class_names: Sequence[str], path: Path, title: str = "") -> Path:
    """The confusion matrix: colour = share of the true class (row-normalised), text = counts."""
    counts = np.asarray(confusion, dtype=np.int64)
    rates = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    return matrix_heatmap(rates, [[str(v) for v in row] for row in counts], class_names, path, cmap="Blues",
                          vmax=1.0, xlabel="predicted class", ylabel="true class",
                          colorbar_label="share of true class", title=title)


def attention_histogram(attention: np.ndarray, flipped: np.ndarray | None, path: Path, title: str = "") -> Path:
    """Histogram of per-sample attention; with label noise, flipped and clean labels apart."""
    attention = np.asarray(attention, dtype=float)
    seen = ~np.isnan(attention)
    fig = _figure(6, 3.5)
    ax = fig.subplots()
    values = attention[seen]
    bins = np.histogram_bin_edges(values, 40)  # shared by the clean and the flipped histogram
    if flipped is None:
        ax.hist(values, bins=bins, color="tab:blue")
    else:
        flipped = np.asarray(flipped, dtype=bool)[seen]
        ax.hist(values[~flipped], bins=bins, alpha=0.6, label="clean label", color="tab:blue")
        ax.hist(values[flipped], bins=bins, alpha=0.6, label="flipped label", color="tab:red")
        ax.legend()
    ax.set_xlabel("attention")
    ax.set_ylabel("training images")
    ax.set_title(title)
    return _save(fig, path)


def image_grid(images: Sequence[np.ndarray], captions: Sequence[str], path: Path, title: str = "",
               columns: int = 6) -> Path:
    """Images [H, W, 3] uint8 in a grid, a caption under each."""
    rows = max(1, -(-len(images) // columns))
    fig = _figure(2.0 * columns, 2.4 * rows, layout="constrained")  # the title sits right above the grid
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, caption in zip(axes.flat, images, captions):
        ax.imshow(image)
        ax.set_title(caption, fontsize=7)
    fig.suptitle(title)
    return _save(fig, path)


def accuracy_bars(settings: Sequence[str], means: Sequence[float], stds: Sequence[float], path: Path,
                  ylabel: str = "test accuracy (%)", title: str = "") -> Path:
    """One bar per setting, mean with a ± std error bar (no bar where a setting has one job)."""
    n = len(settings)
    fig = _figure(max(4.0, 0.8 * n + 2), 4)
    ax = fig.subplots()
    errors = [0.0 if s != s else s for s in stds]  # NaN std (one job): no error bar
    ax.bar(range(n), means, yerr=errors, capsize=4, color="tab:blue")
    ax.set_xticks(range(n), settings, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return _save(fig, path)


def learning_curves(curves: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]], path: Path,
                    ylabel: str = "test accuracy (%)", title: str = "") -> Path:
    """Per setting: (epochs, mean, std) drawn as a line with a ± std band."""
    fig = _figure(7, 4.5)
    ax = fig.subplots()
    for setting, (epochs, mean, std) in curves.items():
        line, = ax.plot(epochs, mean, marker="o", markersize=3, label=setting)
        std = np.nan_to_num(np.asarray(std, dtype=float))
        ax.fill_between(epochs, mean - std, mean + std, alpha=0.2, color=line.get_color())
    ax.set_xlabel("epoch")
    ax.xaxis.get_major_locator().set_params(integer=True)  # whole epochs
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    ax.set_title(title)
    return _save(fig, path)
