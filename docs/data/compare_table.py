"""The published `sweep=compare` table (docs/research.md) from its per-job figures, compare_jobs.csv.

    python docs/data/compare_table.py add <sweep dir>   # append a finished sweep's jobs to the csv
    python docs/data/compare_table.py table             # print the tables, draw the picture

The csv keeps one row per job (method, label noise, seed, best test accuracy, the small-loss
detector's AUROC and the method's own detector's), so the table can be recomputed, and extended by
more seeds, without the job dirs. The tables are mean ± sample std over the seeds; the second is the
paired difference to each method's baseline (the same seed and noise), which is what the comparison
asks.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
CSV = HERE / "compare_jobs.csv"
PNG = HERE.parent / "img" / "research_compare_accuracy.png"
METHODS = ("ce", "adadf", "ce_full", "scn", "rul", "eac")  # each baseline above the methods read against it
BASELINE = {"adadf": "ce", "scn": "ce_full", "rul": "ce_full", "eac": "ce_full"}
NETWORK = {"ce": "Ada-DF's, trunk frozen", "adadf": "Ada-DF's, trunk frozen"}  # the others: the whole ResNet
OWN_SCORE = {"adadf": "attention", "scn": "importance", "rul": "uncertainty", "eac": "consistency"}
NOISES = (0.0, 0.2, 0.4)
CHANCE = 100.0 / 7


def own_auroc(job: pd.Series) -> float:
    """A job's AUROC for its method's own score (NaN for the baselines, or without label noise)."""
    from adadf.tracking.samples import auroc_key

    score = OWN_SCORE.get(job["method"])
    return round(float(job.get(auroc_key(score), math.nan)), 2) if score else math.nan


def add(sweep_dir: Path, source: str, csv: Path = CSV) -> pd.DataFrame:
    """``sweep_dir``'s completed jobs as csv rows, added to ``csv`` (replacing the rows of the same
    method, noise and seed: a re-run job's figures are its latest)."""
    from adadf.tracking.sweep import job_table

    jobs = job_table(sweep_dir)
    jobs = jobs[jobs["status"] == "completed"]
    rows = pd.DataFrame({
        "method": jobs["method"], "label_noise": jobs["dataset.label_noise"].astype(float),
        "seed": jobs["seed"].astype(int), "best_acc": jobs["best_acc"].round(2),
        "noise_auroc_aux_loss": jobs.get("noise_auroc_aux_loss", pd.Series(dtype=float)).round(2),
        "own_score": jobs["method"].map(OWN_SCORE).fillna(""),
        "noise_auroc_own": jobs.apply(own_auroc, axis=1),
        "source": source})
    keys = ["method", "label_noise", "seed"]
    old = pd.read_csv(csv) if csv.exists() else rows.iloc[:0]
    kept = old[~old.set_index(keys).index.isin(rows.set_index(keys).index)]
    pd.concat([kept, rows]).to_csv(csv, index=False)
    return rows


def mean_std(values: pd.Series) -> str:
    values = values.dropna()
    if values.empty:
        return "-"
    return f"{values.mean():.1f}" if len(values) < 2 else f"{values.mean():.1f} ± {values.std():.1f}"


def tables(jobs: pd.DataFrame) -> str:
    """The markdown tables: accuracy and detectors per method; the paired difference to the baseline."""
    seeds = jobs["seed"].nunique()
    cell = {(m, n): g for (m, n), g in jobs.groupby(["method", "label_noise"])}
    head = ("| method | network | noise 0 | noise 0.2 | noise 0.4 | AUROC at 0.2: aux_loss / own score "
            "| AUROC at 0.4: aux_loss / own score |")
    lines = [head, "|" + "---|" * 7]
    for m in METHODS:
        accs = [mean_std(cell[m, n]["best_acc"]) for n in NOISES]
        own = OWN_SCORE.get(m)
        aurocs = [mean_std(cell[m, n]["noise_auroc_aux_loss"])
                  + (f" / {own} {mean_std(cell[m, n]['noise_auroc_own'])}" if own else " / -") for n in NOISES[1:]]
        lines.append(f"| {m} | {NETWORK.get(m, 'whole ResNet trained')} | " + " | ".join(accs + aurocs) + " |")
    lines += ["", f"Paired difference to the baseline (same seed and noise), accuracy points, mean ± std over "
              f"{seeds} seeds:", "", "| method - baseline | noise 0 | noise 0.2 | noise 0.4 |", "|---|---|---|---|"]
    for m, base in BASELINE.items():
        diffs = []
        for n in NOISES:
            paired = cell[m, n].set_index("seed")["best_acc"] - cell[base, n].set_index("seed")["best_acc"]
            diffs.append(("+" if paired.mean() >= 0 else "") + mean_std(paired))
        lines.append(f"| {m} - {base} | " + " | ".join(diffs) + " |")
    return "\n".join(lines)


def draw(jobs: pd.DataFrame, path: Path) -> Path:
    """Grouped bars: per noise level a bar per method (mean ± std), a dot per seed, the chance line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.2))
    width = 0.8 / len(METHODS)
    colors = plt.get_cmap("tab10").colors
    for i, m in enumerate(METHODS):
        for j, n in enumerate(NOISES):
            values = jobs[(jobs["method"] == m) & (jobs["label_noise"] == n)]["best_acc"]
            x = j + (i - (len(METHODS) - 1) / 2) * width
            ax.bar(x, values.mean(), width, color=colors[i], alpha=0.75, label=m if j == 0 else None,
                   yerr=values.std() if len(values) > 1 else None, capsize=3, ecolor="black")
            ax.plot([x] * len(values), values, "o", color="black", markersize=2.5)
    ax.axhline(CHANCE, color="tab:red", linestyle="--", linewidth=1, label=f"chance ({CHANCE:.1f})")
    ax.set_xticks(range(len(NOISES)), [f"{n:.0%} of the labels flipped" for n in NOISES])
    ax.set_ylabel("best test accuracy (%)")
    ax.set_title(f"sweep=compare, synthetic faces, 15 epochs from scratch: mean ± std over "
                 f"{jobs['seed'].nunique()} seeds, a dot per seed", fontsize=9)
    ax.legend(fontsize=7, ncol=len(METHODS) + 1, loc="upper center")
    ax.set_ylim(0, 108)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    add_cmd = sub.add_parser("add", help="append a finished sweep's completed jobs to compare_jobs.csv")
    add_cmd.add_argument("sweep_dir", type=Path)
    add_cmd.add_argument("--source", default="sweep", help="what the rows' source column says")
    draw_cmd = sub.add_parser("table", help="print the tables and draw the picture")
    draw_cmd.add_argument("--png", type=Path, default=PNG)
    args = parser.parse_args(argv)
    if args.command == "add":
        print(f"{len(pd.read_csv(CSV)) if CSV.exists() else 0} jobs in {CSV} before")
        add(args.sweep_dir, args.source)
        print(f"{len(pd.read_csv(CSV))} after")
        return 0
    jobs = pd.read_csv(CSV)
    print(tables(jobs))
    print(f"picture: {draw(jobs, args.png)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
