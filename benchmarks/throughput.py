"""Training throughput: model alone vs the real input pipelines, in one run on one machine.

    python benchmarks/throughput.py                                # RAF-DB layout, synthetic faces
    python benchmarks/throughput.py --train 12271 --test 3068      # RAF-DB's size (GPU hosts)
    python benchmarks/throughput.py --root ./datasets/raf-basic    # a real RAF-DB
    python benchmarks/throughput.py -- trainer.amp=true trainer.channels_last=true   # config overrides

The config is composed from adadf/conf/ (``dataset=raf`` plus the overrides after ``--``), so every
figure uses the RAF recipe at 224 px, the configured backbone, batch size and workers. Without
``--root`` a RAF-DB layout dataset of 100x100 JPEGs is written once from the built-in synthetic
faces (``--train`` / ``--test`` images) under ``$ADADF_CACHE_DIR/bench`` (else ~/.cache/adadf/bench).

For each pipeline (``device``, ``small_first``, ``reference`` by default: ``dataset.pipeline=auto`` is
``device`` on CUDA and ``reference`` on the CPU), measured over ``--batches`` batches after a warm-up batch:

- input only: augmented, normalised batches ready on the training device, no model; images/s, the
  CPU cores the pipeline kept busy (CPU seconds of this process and its DataLoader workers per
  wall second) and images per CPU-core-second ("per core used");
- end to end: ``train_one_epoch`` over the real loader (load + augment + step), images/s;
- class-distribution pass (eval-mode pass over the training loader, reference ``ld_pass``) and
  test evaluation, timed over the same number of batches and scaled to the full split;
- epoch time: estimated as full-epoch training at the end-to-end rate + the two passes above;
- peak memory: CUDA ``max_memory_allocated``, or on the CPU this process's peak RSS (VmHWM, reset
  per phase) plus the workers' RSS.

- model only: ``train_one_epoch`` over batches already augmented and on the device. Model-only and
  end-to-end blocks alternate (two rounds), so that their ratio (how much the input pipeline slows
  training) compares measurements under the same machine load; before every timed block the
  batches the workers prefetched meanwhile are thrown away, so no block gets them for free.

CPU-only machines: run it when the machine is otherwise idle (the load average is printed with
every run); the CPU figures of a shared machine drift with the other jobs.
"""
from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Iterable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

from omegaconf import OmegaConf  # noqa: E402

from adadf import app  # noqa: E402
from adadf.config import register_schemas  # noqa: E402
from adadf.engine.loop import evaluate, observe_pass, train_one_epoch  # noqa: E402

log = logging.getLogger("throughput")

PIPELINES = ("device", "small_first", "reference")  # auto = device on CUDA, reference on the CPU


# --------------------------------------------------------------------------------------------
# Machine facts and process accounting
# --------------------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    facts = {
        "cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(), "load_avg_1_5_15": os.getloadavg(),
    }
    if torch.cuda.is_available():
        facts["gpu"] = torch.cuda.get_device_name()
    return facts


_TICK = os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            text = Path(f"/proc/{pid}/task/{tid}/children").read_text().split()
            kids += [int(k) for k in text]
    except OSError:
        pass
    return kids


def _proc_cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK  # utime + stime
    except (OSError, IndexError, ValueError):
        return 0.0


def _rss_mb(pid: int, key: str = "VmRSS") -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class Meter:
    """Wall time, CPU seconds of this process and its live children (DataLoader workers), memory."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def __enter__(self) -> "Meter":
        self._sync()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            try:  # reset VmHWM (peak RSS) of this process
                Path("/proc/self/clear_refs").write_text("5")
            except OSError:
                pass
        self._cpu0 = self._cpu()
        self._t0 = time.perf_counter()
        return self

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _cpu(self) -> dict[int, float]:
        pid = os.getpid()  # this process: the precise clock; workers: /proc (clock ticks)
        return {pid: time.process_time(), **{p: _proc_cpu_s(p) for p in _children(pid)}}

    def __exit__(self, *exc: object) -> None:
        self._sync()
        self.wall_s = time.perf_counter() - self._t0
        cpu1 = self._cpu()
        self.cpu_s = sum(v - self._cpu0.get(p, 0.0) for p, v in cpu1.items())
        self.cores = self.cpu_s / self.wall_s if self.wall_s > 0 else float("nan")
        pid = os.getpid()
        if self.device.type == "cuda":
            self.peak_mem_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
            self.mem_note = "CUDA max_memory_allocated"
        else:
            workers = sum(_rss_mb(p) for p in _children(pid))
            self.peak_mem_mb = _rss_mb(pid, "VmHWM") + workers
            self.mem_note = "peak RSS of this process + RSS of workers"


class Batches:
    """Batches from one loader iterator kept across measurements.

    ``ready(n)`` starts a new epoch's iterator (untimed) when fewer than ``n`` batches are left, so a
    timed block never includes worker start-up; ``drain()`` throws away what the workers prefetched
    while nothing consumed them, so a timed block starts from an empty queue, as in steady training.
    """

    def __init__(self, loader: Any) -> None:
        self.loader = loader
        self.prefetch = (getattr(loader, "prefetch_factor", None) or 0) * getattr(loader, "num_workers", 0)
        self.it: Any = None
        self.left = 0

    def ready(self, n: int) -> None:
        if self.left < n + self.prefetch + 1:
            self.it, self.left = iter(self.loader), len(self.loader)
            self.take_untimed(1)  # workers started

    def take_untimed(self, n: int) -> None:
        for _ in self.take(n):
            pass

    def drain(self) -> None:
        self.take_untimed(self.prefetch)

    def take(self, n: int) -> Iterable:
        for _ in range(n):
            self.left -= 1
            try:
                yield next(self.it)
            except StopIteration:  # an epoch shorter than the block: go on into the next one
                self.it, self.left = iter(self.loader), len(self.loader) - 1
                yield next(self.it)


def take(loader: Iterable, n: int) -> Iterable:
    return itertools.islice(iter(loader), n)


# --------------------------------------------------------------------------------------------
# A RAF-DB layout dataset of 100x100 JPEGs from the synthetic faces
# --------------------------------------------------------------------------------------------
def write_synthetic_raf(root: Path, train: int, test: int, size: int = 100, seed: int = 0) -> Path:
    """``root``/EmoLabel/list_patition_label.txt + Image/aligned/*_aligned.jpg (RAF-DB basic)."""
    from PIL import Image

    from adadf.data.synthetic import generate_synthetic

    done = root / ".complete"
    if done.is_file():
        return root
    log.info("writing a RAF-DB layout dataset of %d + %d synthetic faces at %d px to %s", train, test, size, root)
    data = generate_synthetic(train_size=train, test_size=test, image_size=size, seed=seed)
    images_dir = root / "Image" / "aligned"
    images_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    for split in ("train", "test"):
        images, labels = data[f"{split}_images"], data[f"{split}_labels"]
        width = 5 if split == "train" else 4
        for i in range(len(labels)):
            stem = f"{split}_{i + 1:0{width}d}"
            pixels = images[i].permute(1, 2, 0).numpy()
            Image.fromarray(pixels).save(images_dir / f"{stem}_aligned.jpg", format="JPEG", quality=95)
            lines.append(f"{stem}.jpg {int(labels[i]) + 1}\n")
    (root / "EmoLabel").mkdir(parents=True, exist_ok=True)
    (root / "EmoLabel" / "list_patition_label.txt").write_text("".join(lines))
    done.write_text("ok\n")
    return root


# --------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------
def compose_cfg(overrides: list[str]):
    register_schemas()
    with initialize_config_dir(config_dir=str(ROOT / "adadf" / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def measure_pipeline(cfg, pipeline: str, device, ctx, model, optimizer, method, batches: int,
                     input_batches: int) -> dict:
    """Input-only, end-to-end, LD-pass and eval figures of one pipeline."""
    out: dict[str, Any] = {"pipeline": pipeline}
    t0 = time.perf_counter()
    data = app.build_data(OmegaConf.merge(cfg.dataset, {"pipeline": pipeline}), cfg.seed)
    out["setup_s"] = time.perf_counter() - t0  # index, checks, (fast) building or opening the cache
    loader, tf = data.train_loader, data.train_batch_transform
    stream = Batches(loader)
    batch = cfg.dataset.batch_size
    out["train_batches_per_epoch"] = len(loader)

    def prepared(n: int) -> Iterable:
        for images, labels in stream.take(n):
            images = images.to(device, non_blocking=True)
            yield (tf(images) if tf is not None else images), labels.to(device)

    # Input only. Warm-up: workers started, first-touch allocations.
    stream.ready(input_batches + 1)
    device_batches = list(prepared(1))
    stream.drain()
    with Meter(device) as m:
        n = 0
        for x, y in prepared(input_batches):
            n += x.shape[0]
            if len(device_batches) < batches:
                device_batches.append((x, y))
    out |= {"input_images_per_s": n / m.wall_s, "input_cores": m.cores,
            "input_images_per_core_s": n / m.cpu_s if m.cpu_s > 0 else float("nan"),
            "input_peak_mem_mb": m.peak_mem_mb}

    # Training: model-only and end-to-end blocks alternate (two rounds), so that their ratio compares
    # measurements taken under the same machine load (a shared machine's load drifts over minutes).
    epoch = 5  # a training epoch past beta: the loss has every term
    train_one_epoch(model, device_batches[:1], optimizer, method, epoch, ctx)  # warm-up step
    rounds = 2 if batches >= 2 else 1
    sizes = [batches // rounds + (1 if r < batches % rounds else 0) for r in range(rounds)]
    model_s = e2e_s = 0.0
    peak = 0.0
    for size in sizes:
        with Meter(device) as m:
            train_one_epoch(model, device_batches[:size], optimizer, method, epoch, ctx)
        model_s += m.wall_s
        stream.ready(size)
        stream.drain()
        with Meter(device) as m:
            row = train_one_epoch(model, stream.take(size), optimizer, method, epoch, ctx, batch_transform=tf)
        e2e_s += m.wall_s
        peak = max(peak, m.peak_mem_mb)
    images = sum(sizes) * batch
    out |= {"model_images_per_s": images / model_s, "e2e_images_per_s": images / e2e_s,
            "e2e_over_model": model_s / e2e_s, "e2e_peak_mem_mb": peak, "e2e_train_loss": row["train_loss"]}

    stream.ready(batches)
    stream.drain()
    with Meter(device) as m:
        observe_pass(model, stream.take(batches), method, ctx, batch_transform=tf)
    method.end_epoch()  # consume the statistics (the next pipeline starts clean)
    out["ld_pass_s_per_batch"] = m.wall_s / batches
    out["ld_pass_epoch_s"] = out["ld_pass_s_per_batch"] * len(loader)
    out["ld_pass_images_per_s"] = batch / out["ld_pass_s_per_batch"]

    test_batches = min(batches, len(data.test_loader))
    with Meter(device) as m:
        evaluate(model, take(data.test_loader, test_batches), data.num_classes, ctx,
                 batch_transform=data.eval_batch_transform)
    out["eval_epoch_s"] = m.wall_s / test_batches * len(data.test_loader)
    out["eval_images_per_s"] = len(data.test_loader.dataset) / out["eval_epoch_s"]
    out["epoch_s_est"] = (len(loader) * batch / out["e2e_images_per_s"] + out["ld_pass_epoch_s"]
                          + out["eval_epoch_s"])
    out["mem_note"] = m.mem_note
    del data, loader, stream, device_batches
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=None, help="a RAF-DB basic folder (default: synthetic)")
    parser.add_argument("--train", type=int, default=3000, help="synthetic training images (default 3000)")
    parser.add_argument("--test", type=int, default=750, help="synthetic test images (default 750)")
    parser.add_argument("--batches", type=int, default=8, help="timed batches per model measurement (default 8)")
    parser.add_argument("--input-batches", type=int, default=24, help="timed batches, input only (default 24)")
    parser.add_argument("--workers", type=int, default=None, help="dataset.num_workers (default: the cores)")
    parser.add_argument("--pipelines", nargs="+", default=list(PIPELINES))
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides (after --), e.g. trainer.amp=true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    root = args.root
    if root is None:
        base = Path(os.environ.get("ADADF_CACHE_DIR") or Path.home() / ".cache" / "adadf") / "bench"
        root = write_synthetic_raf(base / f"raf-synthetic-{args.train}-{args.test}", args.train, args.test)
    workers = args.workers if args.workers is not None else (os.cpu_count() or 1)
    cfg = compose_cfg(["dataset=raf", f"dataset.root={root}", f"dataset.num_workers={workers}", "logger=none",
                       "backbone.checkpoint=null", "trainer.progress=false", *args.overrides])
    torch.manual_seed(cfg.seed)
    parts = app.build(cfg)  # the training run's model, method, optimizer and step context
    for group in parts.optimizer.param_groups:  # a step costs the same at lr 0, and blocks that reuse
        group["lr"] = 0.0  # the same few batches can then never drive the loss to NaN
    ctx = parts.ctx
    device = ctx.device

    facts = machine()
    facts.update(batch_size=cfg.dataset.batch_size, workers=workers, image_size=cfg.dataset.image_size,
                 device=str(device), overrides=args.overrides, dataset=str(root), batches=args.batches)
    log.info("machine: %s", json.dumps(facts))

    results: dict[str, Any] = {"machine": facts, "pipelines": {}}
    for pipeline in args.pipelines:
        figures = measure_pipeline(cfg, pipeline, device, ctx, parts.model, parts.optimizer, parts.method,
                                   args.batches, args.input_batches)
        figures["load_avg_1min"] = os.getloadavg()[0]
        results["pipelines"][pipeline] = figures
        log.info("%s: %s", pipeline, json.dumps({k: round(v, 3) if isinstance(v, float) else v
                                                 for k, v in figures.items()}))
    results["machine"]["load_avg_end"] = os.getloadavg()
    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


def report(results: dict) -> None:
    pipes = results["pipelines"]
    m = results["machine"]
    print(f"\nmachine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, device {m['device']}"
          + (f" ({m['gpu']})" if "gpu" in m else "") + f"; batch {m['batch_size']}, {m['workers']} workers, "
          f"{m['image_size']} px, {m['batches']} timed batches; load avg (1, 5, 15 min) at start "
          f"{tuple(round(x, 2) for x in m['load_avg_1_5_15'])}, at end {tuple(round(x, 2) for x in m['load_avg_end'])}")
    print(f"{'pipeline':11s} {'input img/s':>11s} {'cores':>6s} {'img/core-s':>10s} {'model img/s':>11s} "
          f"{'e2e img/s':>10s} {'e2e/model':>9s} {'LD pass s':>9s} {'epoch s':>8s} {'peak MB':>8s} {'setup s':>8s}")
    for name, p in pipes.items():
        print(f"{name:11s} {p['input_images_per_s']:11.1f} {p['input_cores']:6.2f} {p['input_images_per_core_s']:10.1f} "
              f"{p['model_images_per_s']:11.1f} {p['e2e_images_per_s']:10.1f} {p['e2e_over_model']:9.3f} "
              f"{p['ld_pass_epoch_s']:9.1f} {p['epoch_s_est']:8.1f} {p['e2e_peak_mem_mb']:8.0f} {p['setup_s']:8.1f}")
    for name in ("device", "small_first"):
        if name in pipes and "reference" in pipes:
            f, r = pipes[name], pipes["reference"]
            print(f"{name} / reference input throughput per core used: "
                  f"{f['input_images_per_core_s'] / r['input_images_per_core_s']:.1f}x "
                  f"(wall: {f['input_images_per_s'] / r['input_images_per_s']:.1f}x)")
    print("input: augmented normalised batches on the device, no model; cores = CPU seconds of this process and "
          "its workers per wall second; img/core-s = images per CPU second. model: training on batches already "
          "on the device, in blocks alternating with e2e (the real loader + augmentation + step). LD pass: the "
          "reference's augmented class-distribution pass, scaled to the epoch; epoch s: estimated (training at the "
          f"e2e rate + LD pass + test evaluation). Peak memory: {next(iter(pipes.values()))['mem_note']}.")


if __name__ == "__main__":
    main()
