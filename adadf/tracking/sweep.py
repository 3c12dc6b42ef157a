"""A multirun's results table (each job's failures are recorded by ``adadf.task``).

- ``SweepSummary`` (a Hydra callback, ``hydra.callbacks`` in adadf/conf/config.yaml) writes
  ``sweep_summary.csv`` (one row per job) and ``sweep_summary_by_setting.csv`` (jobs that differ
  only by seed, as mean and std) into the sweep dir, prints the table, and exits non-zero if any
  job failed.
- It also draws ``sweep_accuracy.png`` (accuracy per setting, ± std where it has several jobs, a
  dot per job, chance = 100 / classes) and ``sweep_curves.png`` (mean ± std test accuracy per
  epoch per setting; a point with an error bar for a single epoch).
- ``python -m adadf.tracking.sweep <sweep dir>`` rebuilds both files and the table for any sweep dir
  (for example while it runs, or after a SLURM sweep was cancelled).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import re
import sys
from pathlib import Path
from typing import Any, Sequence

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from adadf.errors import UserError
from adadf.tracking.files import RunFiles, write_text_atomic
from adadf.words import counted

log = logging.getLogger(__name__)

JOB_CSV = "sweep_summary.csv"
SETTING_CSV = "sweep_summary_by_setting.csv"
SEED_KEYS = ("seed",)
# Accuracy columns of the table: summary.json key -> printed label.
METRICS = {
    "best_acc": "best test acc [ref]",
    "test_acc_at_best_val": "test acc @ best val [honest]",
    "final_acc": "final test acc",
    "best_mean_class_acc": "best mean-class acc",
    "noise_auroc": "noise AUROC: attention",  # with dataset.label_noise (adadf/tracking/samples.py)
    "noise_auroc_aux_loss": "noise AUROC: aux loss",
}  # then every other noise_auroc_<score> the jobs have (metric_columns)
# Jobs of this invocation refused in a dir that holds a run (a re-run sweep): their dirs keep the earlier
# run's files untouched, so the refusal is noted here, one JSON line per job, cleared at each multirun start.
REFUSALS = ".refusals.jsonl"
ACCURACY_PNG = "sweep_accuracy.png"
CURVES_PNG = "sweep_curves.png"
LEGEND = (
    "[ref]    the reference's figure: the highest test accuracy over all epochs (the epoch is\n"
    "         picked on the test set, so it is optimistic)\n"
    "[honest] test accuracy at the epoch with the best validation accuracy (dataset.val_fraction > 0\n"
    "         holds out a stratified part of the training set for validation)"
)


# ---------------------------------------------------------------------------------------------
# The sweep's table
# ---------------------------------------------------------------------------------------------
def metric_columns(columns: Sequence[str]) -> dict[str, str]:
    """``METRICS``, then each method's own detector (``noise_auroc_<score>``) among ``columns``."""
    extra = {c: "noise AUROC: " + c.removeprefix("noise_auroc_").replace("_", " ")
             for c in columns if c.startswith("noise_auroc_") and c not in METRICS}
    return METRICS | extra


def _split_override(override: str) -> tuple[str, str]:
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


def find_jobs(sweep_dir: Path) -> list[Path]:
    """Job dirs under ``sweep_dir`` (those with Hydra's ``.hydra/overrides.yaml`` or a
    ``summary.json``), in job order."""
    dirs = {p.parent.parent for p in sweep_dir.rglob(".hydra/overrides.yaml")}
    dirs |= {p.parent for p in sweep_dir.rglob("summary.json")}

    def order(job: Path) -> tuple[int, str]:
        name = job.relative_to(sweep_dir).as_posix()
        return (int(name), name) if name.isdigit() else (sys.maxsize, name)

    return sorted(dirs, key=order)


def note_refusal(sweep_dir: Path, job_dir: Path, error: str) -> None:
    """Record that the job in ``job_dir`` was refused this time (one short append: safe from parallel jobs)."""
    line = json.dumps({"job": Path(job_dir).resolve().relative_to(Path(sweep_dir).resolve()).as_posix(),
                       "error": error}) + "\n"
    with open(Path(sweep_dir) / REFUSALS, "a") as f:
        f.write(line)


def read_refusals(sweep_dir: Path) -> dict[str, str]:
    """Job (relative dir) -> the line it was refused with, for the jobs of the latest multirun."""
    try:
        lines = (Path(sweep_dir) / REFUSALS).read_text().splitlines()
    except OSError:
        return {}
    notes = {}
    for line in lines:
        try:
            note = json.loads(line)
            notes[str(note["job"])] = str(note["error"])
        except (ValueError, KeyError, TypeError):  # a torn line of a killed job: skipped
            continue
    return notes


def _read_overrides(job: Path) -> list[str]:
    import yaml

    path = job / ".hydra" / "overrides.yaml"
    try:
        return [str(o) for o in yaml.safe_load(path.read_text()) or []]
    except (OSError, yaml.YAMLError):
        return []


def job_table(sweep_dir: Path, seed_keys: Sequence[str] = SEED_KEYS):
    """One row per job: ``job``, ``overrides``, one column per override key that varies across
    jobs, ``setting`` (those keys minus the seed keys), ``status``, and the summary figures.

    ``status`` is ``missing`` for a job without a summary.json (still running, or killed), and
    ``refused`` for a job the latest multirun refused (its dir holds an earlier run: its figures are
    that run's, its ``error`` the refusal).
    """
    import pandas as pd

    rows = []
    refusals = read_refusals(sweep_dir)
    for job in find_jobs(sweep_dir):
        overrides = _read_overrides(job)
        summary = RunFiles(job).read_summary() or {"status": "missing"}
        name = job.relative_to(sweep_dir).as_posix()
        row = {"job": name, "overrides": " ".join(overrides)}
        row |= {f"override:{k}": v for k, v in map(_split_override, overrides)}
        row |= {k: v for k, v in summary.items() if not isinstance(v, (dict, list))}
        if name in refusals:
            row |= {"status": "refused", "error": refusals[name]}
        rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    override_cols = [c for c in frame if c.startswith("override:")]
    varying = [c for c in override_cols if frame[c].astype(str).nunique(dropna=False) > 1]
    frame = frame.drop(columns=[c for c in override_cols if c not in varying])
    frame = frame.rename(columns={c: c.removeprefix("override:") for c in varying})
    keys = [c.removeprefix("override:") for c in varying if c.removeprefix("override:") not in seed_keys]
    frame["setting"] = [
        " ".join(f"{k}={row[k]}" for k in keys if isinstance(row[k], str)) or "(all jobs)"
        for _, row in frame.iterrows()
    ]
    first = ["job", "overrides", *[k.removeprefix("override:") for k in varying], "setting", "status"]
    metrics = [c for c in metric_columns(list(frame)) if c in frame]
    frame = frame[first + metrics + [c for c in frame if c not in first + metrics]]
    return frame


def setting_table(jobs):
    """Jobs grouped by setting (their overrides minus the seed): completed and failed counts, and
    mean and sample std of each accuracy over the completed jobs."""
    import pandas as pd

    rows = []
    for setting, group in jobs.groupby("setting", sort=False):
        done = group[group["status"] == "completed"]
        row: dict[str, Any] = {"setting": setting, "jobs": len(group), "completed": len(done),
                               "failed": len(group) - len(done)}
        for key in metric_columns(list(jobs)):
            if key in group:
                values = pd.to_numeric(done[key], errors="coerce").dropna()
                row[f"{key}_mean"] = values.mean() if len(values) else math.nan
                row[f"{key}_std"] = values.std() if len(values) > 1 else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def _mean_std(mean: float, std: float) -> str:
    if mean != mean:  # NaN: nothing completed
        return "-"
    return f"{mean:.2f}" if std != std else f"{mean:.2f} ± {std:.2f}"


def _short_numbers(text: str) -> str:
    """``fusion.threshold=0.7469660767672961`` -> ``fusion.threshold=0.747`` (for display only)."""
    return re.sub(r"\d+\.\d{4,}", lambda m: f"{float(m.group()):.3g}", text)


def _text_table(columns: dict[str, Sequence[Any]]) -> list[str]:
    """Plain-text table: the first column left-aligned, the others right-aligned."""
    cells = [[str(v) for v in values] for values in columns.values()]
    widths = [max([len(name), *map(len, col)]) for name, col in zip(columns, cells)]

    def line(row: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()

    return [line(list(columns)), *(line(row) for row in zip(*cells))]


def format_table(sweep_dir: Path, jobs, settings) -> str:
    """The printed table: one line per setting, accuracies as mean ± std over its seeds."""
    failed = jobs[jobs["status"] != "completed"]
    shown: dict[str, Sequence[Any]] = {"setting": [_short_numbers(s) for s in settings["setting"]],
                                       "jobs": settings["jobs"], "failed": settings["failed"]}
    honest = "test_acc_at_best_val_mean" in settings and settings["test_acc_at_best_val_mean"].notna().any()
    for key, label in metric_columns(list(jobs)).items():
        if f"{key}_mean" in settings and (honest or key != "test_acc_at_best_val"):
            shown[label] = [_mean_std(m, s) for m, s in zip(settings[f"{key}_mean"], settings[f"{key}_std"])]
    legend = LEGEND.splitlines()
    lines = [
        f"sweep {sweep_dir}: {counted(len(jobs), 'job')}, {len(jobs) - len(failed)} completed, {len(failed)} failed",
        *_text_table(shown),
        "accuracies in %, mean ± std over the completed jobs of a setting (its seeds)",
        *(legend if honest else legend[:2] + ["[honest] not measured: add dataset.val_fraction=0.1 for "
                                              "test accuracy at the best validation epoch"]),
    ]
    for _, job in failed.iterrows():
        error = job.get("error")
        lines.append(f"{job['status']}: job {job['job']} ({job['overrides']})"
                     + (f": {error}" if isinstance(error, str) else ""))
    return "\n".join(lines)


def summarize_sweep(sweep_dir: str | Path, seed_keys: Sequence[str] = SEED_KEYS, echo: bool = True):
    """Write ``sweep_summary.csv`` and ``sweep_summary_by_setting.csv`` into ``sweep_dir``, print
    the table (``echo``), and return the per-job table."""
    sweep_dir = Path(sweep_dir)
    jobs = job_table(sweep_dir, seed_keys)
    if jobs.empty:
        raise UserError(f"{sweep_dir}: no job dirs (with .hydra/overrides.yaml or summary.json) found")
    settings = setting_table(jobs)
    write_text_atomic(sweep_dir / JOB_CSV, jobs.to_csv(index=False))
    write_text_atomic(sweep_dir / SETTING_CSV, settings.to_csv(index=False))
    write_plots(sweep_dir, jobs, settings)
    if echo:  # the command's output (the table), not a log message
        sys.stdout.write(format_table(sweep_dir, jobs, settings) + "\n")
        sys.stdout.flush()
    return jobs


def learning_curves(sweep_dir: Path, jobs, column: str = "test_acc") -> dict[str, tuple]:
    """Per setting: (epochs, mean, std) of ``column`` over its completed jobs' metrics.csv (epochs
    that every one of them reached)."""
    import pandas as pd

    curves = {}
    for setting, group in jobs[jobs["status"] == "completed"].groupby("setting", sort=False):
        series = []
        for job in group["job"]:
            try:
                frame = pd.read_csv(RunFiles(sweep_dir / str(job)).metrics)
            except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError):
                continue
            if column in frame and "epoch" in frame:
                series.append(frame.set_index("epoch")[column])
        if series:
            table = pd.concat(series, axis=1).dropna()
            if not table.empty:
                curves[_short_numbers(str(setting))] = (  # one job: std 0
                    table.index.to_numpy(), table.mean(axis=1).to_numpy(), table.std(axis=1).fillna(0).to_numpy())
    return curves


def num_classes(sweep_dir: Path, job_names: Sequence[str]) -> int | None:
    """The number of classes the jobs were trained on (their summaries' ``best_per_class_acc``),
    or None when unknown or not the same for all."""
    counts = set()
    for name in job_names:
        per_class = (RunFiles(sweep_dir / str(name)).read_summary() or {}).get("best_per_class_acc")
        if isinstance(per_class, dict) and per_class:
            counts.add(len(per_class))
    return counts.pop() if len(counts) == 1 else None


def write_plots(sweep_dir: Path, jobs, settings) -> list[Path]:
    """``sweep_accuracy.png`` (best test accuracy per setting: mean ± std, a dot per job, the chance
    level) and ``sweep_curves.png`` (test accuracy per epoch, mean ± std band per setting) into the
    sweep dir."""
    import pandas as pd

    from adadf.tracking import plots

    written = []
    done = settings[settings["completed"] > 0]
    if "best_acc_mean" in done and len(done):
        completed = jobs[jobs["status"] == "completed"]
        per_job = [pd.to_numeric(completed.loc[completed["setting"] == s, "best_acc"], errors="coerce").dropna()
                   .tolist() for s in done["setting"]]
        classes = num_classes(sweep_dir, completed["job"])
        written.append(plots.accuracy_bars(
            [_short_numbers(s) for s in done["setting"]], done["best_acc_mean"].tolist(),
            done["best_acc_std"].tolist(), sweep_dir / ACCURACY_PNG, values=per_job,
            chance=100.0 / classes if classes else None,
            title="best test accuracy per setting (mean ± std over seeds, a dot per job)"))
    curves = learning_curves(sweep_dir, jobs)
    if curves:
        written.append(plots.learning_curves(curves, sweep_dir / CURVES_PNG,
                                             title="test accuracy per epoch (mean ± std over seeds)"))
    return written


def plain_sweeper_logs(sweeper: str) -> None:
    """Before the sweeper is built: alembic (imported by Optuna's storage) logs a "setup plugin" line per
    plugin, and Optuna colours its own lines with ANSI codes even into files and pipes. Keep alembic to
    warnings, and send Optuna's lines through the job's logging like every other line."""
    logging.getLogger("alembic").setLevel(logging.WARNING)
    if "optuna" in sweeper.lower():
        import optuna

        optuna.logging.disable_default_handler()
        optuna.logging.enable_propagation()


class SweepSummary(Callback):
    """Hydra callback: at the end of every multirun, the sweep's table; non-zero exit if a job failed."""

    def __init__(self, seed_keys: Sequence[str] = SEED_KEYS) -> None:
        self.seed_keys = tuple(seed_keys)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        (Path(config.hydra.sweep.dir) / REFUSALS).unlink(missing_ok=True)  # the previous invocation's
        plain_sweeper_logs(str(config.hydra.sweeper.get("_target_", "")))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        jobs = summarize_sweep(sweep_dir, self.seed_keys)
        failed = int((jobs["status"] != "completed").sum())
        if failed:
            # SystemExit passes Hydra's callback wrapper (which only warns on exceptions).
            raise SystemExit(f"{failed} of {counted(len(jobs), 'job')} failed (see {sweep_dir / JOB_CSV})")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m adadf.tracking.sweep",
        description=f"Rebuild {JOB_CSV} and {SETTING_CSV} of a sweep dir and print its table.",
    )
    parser.add_argument("sweep_dir", type=Path, help="a multirun's sweep dir (hydra.sweep.dir)")
    parser.add_argument("--seed-keys", nargs="+", default=list(SEED_KEYS),
                        help="override keys that only change the seed (default: seed)")
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        parser.exit(2, f"{args.sweep_dir}: not a directory\n")
    try:
        summarize_sweep(args.sweep_dir, args.seed_keys)
    except UserError as err:
        parser.exit(2, f"{err}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
