"""Pictures of what a run and a sweep did, as PNG files (matplotlib's ``Figure`` with its Agg
canvas: no pyplot, so no global state and no display).

Each function takes plain arrays, writes one PNG atomically and returns its path.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from adadf.atomic import atomic_path
from adadf.words import counted


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
                   title: str = "", framed_rows: Sequence[int] = ()) -> Path:
    """A C x C matrix over the classes: cells coloured by ``colours``, ``texts`` printed in them
    (dark text on light cells, light on dark); ``framed_rows`` outlined in red, their labels red."""
    from matplotlib.patches import Rectangle

    colours = np.asarray(colours, dtype=float)
    size = 1.0 + 0.55 * len(class_names)
    fig = _figure(size + 1.2, size)
    ax = fig.subplots()
    im = ax.imshow(colours, cmap=cmap, vmin=0.0, vmax=vmax)
    ticks = range(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=45, ha="right")
    ax.set_yticks(ticks, class_names)
    for row in framed_rows:
        ax.add_patch(Rectangle((-0.5, row - 0.5), len(class_names), 1, fill=False, edgecolor="red", lw=2))
        ax.get_yticklabels()[row].set_color("red")
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


def class_distribution_heatmap(matrix: np.ndarray, class_names: Sequence[str], path: Path, title: str = "",
                               fallback: Sequence[bool] | None = None) -> Path:
    """The C x C class-distribution matrix (row i: the distribution for class i), values printed;
    the rows in ``fallback`` (the fixed distribution: too few confident samples) framed in red."""
    matrix = np.asarray(matrix, dtype=float)
    fallback = np.zeros(len(class_names), bool) if fallback is None else np.asarray(fallback, bool)
    if fallback.any():
        fell_back = counted(int(fallback.sum()), "class", "classes")
        title = f"{title}\nin red: {fell_back} fell back to the fixed distribution"
    return matrix_heatmap(matrix, [[f"{v:.2f}" for v in row] for row in matrix], class_names, path,
                          cmap="viridis", vmax=max(1.0, float(matrix.max())), xlabel="distribution over classes",
                          ylabel="label", title=title, framed_rows=np.flatnonzero(fallback))


def confusion_heatmap(confusion: np.ndarray, class_names: Sequence[str], path: Path, title: str = "") -> Path:
    """The confusion matrix: colour = share of the true class (row-normalised), text = counts."""
    counts = np.asarray(confusion, dtype=np.int64)
    rates = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    return matrix_heatmap(rates, [[str(v) for v in row] for row in counts], class_names, path, cmap="Blues",
                          vmax=1.0, xlabel="predicted class", ylabel="true class",
                          colorbar_label="share of true class", title=title)


def attention_histogram(attention: np.ndarray, flipped: np.ndarray | None, path: Path, title: str = "") -> Path:
    """Density of per-sample attention over [0, 1] (the sigmoid's range, the same axes every epoch);
    with label noise, flipped and clean labels apart, each its own density (they differ in size)."""
    attention = np.asarray(attention, dtype=float)
    seen = ~np.isnan(attention)
    fig = _figure(6, 3.5)
    ax = fig.subplots()
    values = attention[seen]
    bins = np.linspace(0.0, 1.0, 41)
    if flipped is None:
        ax.hist(values, bins=bins, density=True, color="tab:blue")
    else:
        flipped = np.asarray(flipped, dtype=bool)[seen]
        ax.hist(values[~flipped], bins=bins, density=True, alpha=0.6, label="clean label", color="tab:blue")
        ax.hist(values[flipped], bins=bins, density=True, alpha=0.6, label="flipped label", color="tab:red")
        ax.legend()
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel("attention")
    ax.set_ylabel("density")
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
                  ylabel: str = "test accuracy (%)", title: str = "", values: Sequence[Sequence[float]] = (),
                  chance: float | None = None) -> Path:
    """One bar per setting: the mean, a ± std error bar (none where a setting has one job: NaN std),
    ``values`` (each job's figure, per setting) as dots over it, ``chance`` as a dashed line."""
    n = len(settings)
    fig = _figure(max(4.0, 0.8 * n + 2), 4)
    ax = fig.subplots()
    ax.bar(range(n), means, color="tab:blue", alpha=0.7)
    spread = [i for i, s in enumerate(stds) if s == s]
    if spread:
        ax.errorbar(spread, [means[i] for i in spread], yerr=[stds[i] for i in spread], fmt="none",
                    ecolor="black", capsize=4)
    for i, jobs in enumerate(values):
        ax.plot([i] * len(jobs), jobs, "o", color="black", markersize=4, label="a job (seed)" if i == 0 else None)
    if chance is not None:
        ax.axhline(chance, color="tab:red", linestyle="--", linewidth=1, label=f"chance ({chance:.1f})")
    if values or chance is not None:
        ax.legend(fontsize=7)
    ax.set_xticks(range(n), settings, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return _save(fig, path)


def learning_curves(curves: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]], path: Path,
                    ylabel: str = "test accuracy (%)", title: str = "") -> Path:
    """Per setting: (epochs, mean, std) drawn as a line with a ± std band."""
    fig = _figure(7, 4.5)
    ax = fig.subplots()
    epochs_drawn: set[float] = set()
    for setting, (epochs, mean, std) in curves.items():
        std = np.nan_to_num(np.asarray(std, dtype=float))
        if len(epochs) > 1:
            line, = ax.plot(epochs, mean, marker="o", markersize=4, label=setting)
            ax.fill_between(epochs, mean - std, mean + std, alpha=0.2, color=line.get_color())
        else:  # one epoch: a point with a ± std bar (a band of one point draws nothing)
            ax.errorbar(epochs, mean, yerr=std, fmt="o", markersize=6, capsize=4, label=setting)
        epochs_drawn.update(np.asarray(epochs, dtype=float).tolist())
    if len(epochs_drawn) == 1:  # one epoch: centred, with room on both sides
        (epoch,) = epochs_drawn
        ax.set_xlim(epoch - 1, epoch + 1)
    ax.set_xlabel("epoch")
    ax.xaxis.get_major_locator().set_params(integer=True)  # whole epochs
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    ax.set_title(title)
    return _save(fig, path)
