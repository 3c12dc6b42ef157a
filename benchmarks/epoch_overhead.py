"""Epoch overhead: an epoch's wall time minus its training, class-distribution and test passes.

    python benchmarks/epoch_overhead.py                      # debug=fast (synthetic, 32 px), 5 epochs
    python benchmarks/epoch_overhead.py --setting raf        # the RAF recipe (224 px, batch 64) on a tiny RAF-DB layout
    python benchmarks/epoch_overhead.py --wandb --json out.json -- trainer.plots_every=5

What is left of an epoch once its passes are taken out is everything between them: per-sample
scores, pictures, CSVs, W&B media, the checkpoint, metrics.csv. The passes are timed by wrapping
the loop functions the trainer calls (``train_one_epoch``, ``observe_pass``, ``evaluate``) and the
checkpoint by wrapping ``Trainer._save``; an epoch's wall time runs from the start of its training
pass to the start of the next epoch's, the last epoch's to the end of ``fit`` (its tail holds the
end of the run: the suspects grid, the writer's last files). Nothing else is changed, so the script
measures any adadf version the ``adadf`` package on ``PYTHONPATH`` is (``PYTHONPATH=<worktree>``).

Per epoch: wall time, the three passes, the checkpoint (``Trainer._save``), the overhead, the overhead
besides the checkpoint (``other_s``) and this process's CPU time (all its threads, not the loader
workers). The figures to compare are medians over the steady epochs (all but the first and the last).
Work moved to a background thread still costs CPU time, and on a machine with few cores it competes
with the next epoch's passes: compare the CPU time and the wall time too. On a shared machine the
passes swing with the other jobs' load; the overhead figures much less. CUDA runs time with a
synchronisation before each reading.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import adadf  # before the benchmarks' helpers: the adadf under test is the one PYTHONPATH names
import torch
from hydra import compose, initialize_config_dir

from adadf.config import register_schemas
from adadf.engine import trainer as trainer_module

sys.path.insert(1, str(Path(__file__).resolve().parent))
from throughput import machine, write_synthetic_raf  # noqa: E402

SETTINGS = {
    "fast": ["debug=fast"],
    # The RAF recipe as experiment=raf has it, from a random-init backbone, on RAF_IMAGES train/test faces.
    "raf": ["experiment=raf", "backbone.checkpoint=null", "logger=csv", "trainer.progress=false"],
}
RAF_IMAGES = (128, 64)
COLUMNS = ("wall_s", "train_s", "class_dist_s", "test_s", "checkpoint_s", "overhead_s", "other_s", "cpu_s")


def conf_dir() -> Path:
    """The config dir of the adadf under test (inside the package, or beside it in older trees)."""
    package = Path(adadf.__file__).resolve().parent
    return package / "conf" if (package / "conf").is_dir() else package.parent / "conf"


def now() -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


class Clock:
    """Start and end times of every call of the wrapped functions by name: wall clock and this
    process's CPU time."""

    def __init__(self) -> None:
        self.calls: dict[str, list[tuple[float, float]]] = {}
        self.cpu: dict[str, list[tuple[float, float]]] = {}

    def wrap(self, name: str, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            start, cpu = now(), time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.calls.setdefault(name, []).append((start, now()))
                self.cpu.setdefault(name, []).append((cpu, time.process_time()))
        return timed

    def total(self, name: str, start: float, end: float) -> float:
        return sum(b - a for a, b in self.calls.get(name, []) if start <= a < end)


@contextlib.contextmanager
def timing(clock: Clock):
    """The trainer's passes, checkpoint and ``fit`` timed for the duration of the block."""
    patched = [(trainer_module, name) for name in ("train_one_epoch", "observe_pass", "evaluate")]
    patched += [(trainer_module.Trainer, "_save"), (trainer_module.Trainer, "fit")]
    originals = [(owner, name, getattr(owner, name)) for owner, name in patched]
    for owner, name, fn in originals:
        setattr(owner, name, clock.wrap(name, fn))
    try:
        yield
    finally:
        for owner, name, fn in originals:
            setattr(owner, name, fn)


def epochs_of(clock: Clock) -> list[dict[str, float]]:
    """Per epoch: wall time, each pass, the checkpoint and the overhead (wall minus the passes)."""
    starts = [a for a, _ in clock.calls["train_one_epoch"]]
    ends = starts[1:] + [clock.calls["fit"][-1][1]]
    cpu = [a for a, _ in clock.cpu["train_one_epoch"]] + [clock.cpu["fit"][-1][1]]
    rows = []
    for epoch, (start, end) in enumerate(zip(starts, ends), start=1):
        row = {"epoch": epoch, "wall_s": end - start, "cpu_s": cpu[epoch] - cpu[epoch - 1]}
        for name, key in (("train_one_epoch", "train_s"), ("observe_pass", "class_dist_s"),
                          ("evaluate", "test_s"), ("_save", "checkpoint_s")):
            row[key] = clock.total(name, start, end)
        row["overhead_s"] = row["wall_s"] - row["train_s"] - row["class_dist_s"] - row["test_s"]
        row["other_s"] = row["overhead_s"] - row["checkpoint_s"]
        rows.append(row)
    return rows


def run(overrides: list[str], workdir: Path) -> list[dict[str, float]]:
    """One training run in this process, into a fresh run dir under ``workdir``."""
    from adadf.task import train

    register_schemas()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=workdir))
    clock, cwd = Clock(), Path.cwd()
    os.chdir(run_dir)  # outside Hydra's app the run dir is the cwd
    try:
        with timing(clock):
            summary = train(cfg)
    finally:
        os.chdir(cwd)
    if summary.get("status") != "completed":
        raise SystemExit(f"the run did not complete: {summary}")
    return epochs_of(clock)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setting", choices=sorted(SETTINGS), default="fast")
    parser.add_argument("--epochs", type=int, default=5, help="epochs per run (default 5: 3 steady ones)")
    parser.add_argument("--repeats", type=int, default=1, help="runs, one after the other (default 1)")
    parser.add_argument("--wandb", action="store_true", help="logger=wandb (offline): W&B media included")
    parser.add_argument("--workdir", type=Path, default=None, help="where the runs go (default: a temp dir)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides (after --)")
    args = parser.parse_args(argv)

    cache = Path(os.environ.setdefault("ADADF_CACHE_DIR", str(Path.home() / ".cache" / "adadf")))
    overrides = [*SETTINGS[args.setting], f"trainer.epochs={args.epochs}"]
    if args.setting == "raf":
        root = write_synthetic_raf(cache / "bench" / f"raf-{RAF_IMAGES[0]}-{RAF_IMAGES[1]}", *RAF_IMAGES)
        overrides.append(f"dataset.root={root}")
    if args.wandb:
        overrides.append("logger=wandb")
    overrides += args.overrides
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="epoch-overhead-"))
    workdir.mkdir(parents=True, exist_ok=True)

    results: dict[str, Any] = {"machine": machine(), "adadf": str(Path(adadf.__file__).parent),
                               "overrides": overrides, "runs": []}
    for _ in range(args.repeats):
        results["runs"].append(run(overrides, workdir))
    steady = [row for rows in results["runs"] for row in rows[1:-1]]
    if steady:
        for key in COLUMNS:
            results[f"steady_median_{key}"] = statistics.median(row[key] for row in steady)
    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


def report(results: dict[str, Any]) -> None:
    m = results["machine"]
    print(f"{m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} threads), "
          f"load {', '.join(f'{x:.2f}' for x in m['load_avg_1_5_15'])}; adadf from {results['adadf']}")
    print("overrides: " + " ".join(results["overrides"]))
    columns = COLUMNS
    print("run epoch " + " ".join(f"{c:>12}" for c in columns))
    for r, rows in enumerate(results["runs"], start=1):
        for row in rows:
            print(f"{r:>3} {row['epoch']:>5} " + " ".join(f"{row[c]:12.3f}" for c in columns))
    if "steady_median_overhead_s" in results:
        print("steady epochs, median: " + ", ".join(
            f"{c} {results[f'steady_median_{c}']:.3f}" for c in columns))


if __name__ == "__main__":
    main()
