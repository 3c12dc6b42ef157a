"""One-shot GPU check: everything adadf claims about a CUDA machine, measured in one command.

    make gpu-check                                   # = python benchmarks/gpu_check.py (one GPU, < 8 min)
    make gpu-check ARGS="--quick --json out.json"    # tiny sizes: runs anywhere, the CPU included (CI)

Prints and writes (``--json``, default ``gpu_check.json``; a markdown row for
``benchmarks/RESULTS.md`` beside it, ``.md``):

1. the CUDA-only tests (``pytest -k cuda`` on the test files that skip without CUDA): passed /
   failed / skipped;
2. training throughput at 224 px, model only vs end to end, for every pipeline (``device``: what
   ``dataset.pipeline=auto`` runs on CUDA; ``small_first``; ``reference``), in fp32 and in AMP
   bf16 + channels_last; the class-distribution (LD) pass and evaluation images/s; peak memory
   (CUDA ``max_memory_allocated``) -- ``benchmarks/throughput.py``'s measurements;
3. a 3-epoch ``python run.py experiment=raf`` on a generated RAF-DB-size set (12,271 / 3,068 faces
   at 100 px in RAF-DB's layout, random-init backbone, AMP bf16 + channels_last): each epoch's
   time, the steady epoch (mean of epochs 2-3), the pipeline ``dataset.pipeline=auto`` picked, and the
   projected 75-epoch time (first epoch + 74 x the steady one); on CUDA the same 3-epoch run for every
   pipeline x precision; and the aten ops per augmented batch of the device recipe at 64 and 256;
4. with 2+ GPUs, the same run for one epoch under ``torchrun --nproc_per_node=2``;
5. the step alone (batches already on the device, no loader): training, class-distribution pass and
   evaluation images/s, eager vs captured (``trainer.compile=true trainer.compile_mode=reduce-overhead``:
   CUDA graphs; CUDA only) x fp32 vs AMP bf16 + channels_last, and the evaluation at 4x the batch
   (images/s, and whether its predictions were the same). Its verdict says whether AMP and the
   captured step measured faster: what ``adadf.app.AUTO_AMP_ON_CUDA`` and the docs' default follow.

``--quick``: 21 / 14 images at 32 px, 16 px recipe, batch 4, one timed batch, one thread: under a
minute on a CPU; the figures then only show that every part runs. Models, optimizers and data are built by
``adadf.app`` (through ``throughput.py`` and ``run.py``), as in training.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

import pandas as pd  # noqa: E402
import torch  # noqa: E402

import throughput  # noqa: E402
from adadf.tracking.files import RunFiles  # noqa: E402

log = logging.getLogger("gpu_check")

FAST_OVERRIDES = ["trainer.amp=true", "trainer.amp_dtype=bfloat16", "trainer.channels_last=true"]
FP32_OVERRIDES = ["trainer.amp=false", "trainer.channels_last=false"]  # whatever trainer.amp=auto picks
PRECISIONS = {"fp32": FP32_OVERRIDES, "amp_bf16_channels_last": FAST_OVERRIDES}
CAPTURED = ["trainer.compile=true", "trainer.compile_mode=reduce-overhead"]
STEP_VARIANTS = {
    "eager_fp32": FP32_OVERRIDES,
    "eager_bf16_channels_last": FAST_OVERRIDES,
    "captured_fp32": [*FP32_OVERRIDES, *CAPTURED],
    "captured_bf16_channels_last": [*FAST_OVERRIDES, *CAPTURED],
}
FASTER = 1.05  # a variant "measures faster" when at least 5% more images/s
RAF_SIZE = (12271, 3068)  # RAF-DB basic: train / test
EPOCHS_PAPER = 75


def sizes(quick: bool) -> dict[str, Any]:
    if quick:  # one thread: quick runs share CI machines, where spinning OpenMP threads cost the most
        return dict(train=21, test=14, image_px=32, overrides=["dataset.image_size=16", "dataset.batch_size=4"],
                    batches=1, input_batches=1, workers=0, threads=1)
    return dict(train=RAF_SIZE[0], test=RAF_SIZE[1], image_px=100, overrides=[], batches=8, input_batches=24,
                workers=min(16, os.cpu_count() or 1), threads=0)


# -------------------------------------------------------------------------------------- the parts
def cuda_tests() -> dict[str, Any]:
    """``pytest -k cuda`` over the test files with CUDA-only tests (they skip without CUDA)."""
    files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_*.py")
                   if "torch.cuda.is_available()" in p.read_text())
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "cuda", *files]
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    counts = {k: 0 for k in ("passed", "failed", "skipped", "errors")}
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    for number, word in re.findall(r"(\d+) (passed|failed|skipped|errors?)", summary):
        counts["errors" if word.startswith("error") else word] = int(number)
    failures = [line for line in proc.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
    return {"command": " ".join(["python", *command[1:]]), "returncode": proc.returncode, **counts,
            "summary": summary, "failures": failures, "seconds": time.perf_counter() - start}


def measure_throughput(root: Path, size: dict, precision: str, extra: list[str]) -> dict[str, Any]:
    """``throughput.py`` for every pipeline at one precision (its own model, built by adadf.app)."""
    results = throughput.main(["--root", str(root), "--batches", str(size["batches"]),
                               "--input-batches", str(size["input_batches"]), "--workers", str(size["workers"]),
                               "--pipelines", *throughput.PIPELINES,
                               "--", *size["overrides"], *PRECISIONS[precision], *extra])
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return results


def raf_run(root: Path, size: dict, epochs: int, extra: list[str], nproc: int = 1,
            precision: str | None = None, pipeline: str = "auto") -> dict[str, Any]:
    """``python run.py experiment=raf`` (or under torchrun) for ``epochs`` epochs; per-epoch times,
    the steady epoch (the mean of epochs 2.. : the first pays start-up) and the pipeline that ran.
    ``precision`` None: AMP bf16 + channels_last on CUDA, fp32 on the CPU (bf16 autocast is slow there)."""
    if precision is None:
        precision = "amp_bf16_channels_last" if torch.cuda.is_available() else "fp32"
    extra = [*PRECISIONS[precision], f"dataset.pipeline={pipeline}", *extra]
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        overrides = ["experiment=raf", f"dataset.root={root}", "backbone.checkpoint=null", f"trainer.epochs={epochs}",
                     f"dataset.num_workers={size['workers']}", "logger=none", "trainer.progress=false",
                     f"hydra.run.dir={run_dir}", *size["overrides"], *extra]
        env = {**os.environ, **({"OMP_NUM_THREADS": "1"} if size["threads"] else {})}
        launcher = [sys.executable, "run.py"] if nproc == 1 else [
            sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "run.py"]
        start = time.perf_counter()
        proc = subprocess.run([*launcher, *overrides], cwd=ROOT, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - start
        out: dict[str, Any] = {"command": " ".join(["python", *launcher[1:], *overrides]),
                               "returncode": proc.returncode, "wall_s": wall, "processes": nproc,
                               "precision": precision, "pipeline_asked": pipeline}
        metrics = run_dir / "metrics.csv"
        if proc.returncode != 0 or not metrics.is_file():
            out["error"] = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            return out
        frame = pd.read_csv(metrics)
        summary = RunFiles(run_dir).read_summary() or {}
        log_text = (run_dir / "run.log").read_text() if (run_dir / "run.log").is_file() else ""
    times = frame["epoch_time_s"].tolist()
    out.update(epochs=len(frame), epoch_time_s=times, train_images_per_s=frame["train_images_per_s"].tolist(),
               ld_time_s=frame["ld_time_s"].dropna().tolist() if "ld_time_s" in frame else [],
               test_acc=frame["test_acc"].tolist(), status=summary.get("status"),
               pipeline=next(iter(re.findall(r"\), (\w+) pipeline", log_text)), None))
    steady = sum(times[1:]) / len(times[1:]) if len(times) > 1 else times[0]
    out["steady_epoch_s"] = steady
    out["projected_75_epochs_s"] = times[0] + (EPOCHS_PAPER - 1) * steady
    return out


def raf_epochs(root: Path, size: dict, extra: list[str]) -> dict[str, Any]:
    """The steady epoch of a 3-epoch ``experiment=raf`` run per pipeline and precision (on CUDA;
    elsewhere only what ``auto`` runs, in fp32: the CPU's figures come from benchmarks/epoch_overhead.py)."""
    if not torch.cuda.is_available():
        return {"skipped": "no CUDA: the main experiment=raf run is the CPU's only one"}
    runs = {}
    for pipeline in throughput.PIPELINES:
        for precision in PRECISIONS:
            run = raf_run(root, size, 3, extra, precision=precision, pipeline=pipeline)
            runs[f"{pipeline}/{precision}"] = {k: run.get(k) for k in ("epoch_time_s", "steady_epoch_s", "status",
                                                                       "error", "command")}
    return runs


def aug_ops(device: torch.device) -> dict[str, Any]:
    """aten ops per augmented batch of the device recipe at batch 64 and 256 (benchmarks/aug_launches.py)."""
    import aug_launches

    result = aug_launches.main(["--sizes", "64", "256", "--batches", "1", "--images", "256", "--device", str(device)])
    return {size: {"top_level": v["top_level"], "all": v["all"]} for size, v in result["sizes"].items()}


def _timed(device: torch.device, work) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    work()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def measure_step(root: Path, size: dict, variant: str, extra: list[str]) -> dict[str, Any]:
    """One variant of the step on batches already on the device (the model's share of an epoch):
    training, class-distribution pass and evaluation images/s, evaluation at 4x the batch."""
    if variant.startswith("captured") and not torch.cuda.is_available():
        return {"skipped": "no CUDA: CUDA graphs need a GPU (compiling on a CPU takes minutes)"}
    from adadf import app
    from adadf.engine.loop import evaluate, observe_pass, train_one_epoch

    cfg = throughput.compose_cfg(["dataset=raf", f"dataset.root={root}", "dataset.num_workers=0", "logger=none",
                                  "backbone.checkpoint=null", "trainer.progress=false", *size["overrides"],
                                  *STEP_VARIANTS[variant], *extra])
    torch.manual_seed(cfg.seed)
    try:
        parts = app.build(cfg)
        for group in parts.optimizer.param_groups:  # lr 0: the same batch over and over never diverges
            group["lr"] = 0.0
        ctx, device, model, method = parts.ctx, parts.ctx.device, parts.model, parts.method
        batch, px, n = cfg.dataset.batch_size, cfg.dataset.image_size, max(4, size["batches"] * 4)
        batches = [(torch.randn(batch, 3, px, px, device=device),
                    torch.randint(0, parts.data.num_classes, (batch,), device=device)) for _ in range(4)]
        stream = [batches[i % 4] for i in range(n)]
        big = [(torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches]))] * (n // 4)
        epoch = 5  # past beta: the loss has every term
        warm = _timed(device, lambda: train_one_epoch(model, stream[:3], parts.optimizer, method, epoch, ctx))
        train_s = _timed(device, lambda: train_one_epoch(model, stream, parts.optimizer, method, epoch, ctx))
        observe_pass(model, stream[:3], method, ctx)  # warm-up (a captured model records its graphs)
        ld_s = _timed(device, lambda: observe_pass(model, stream, method, ctx))
        method.end_epoch()
        classes = parts.data.num_classes
        evaluate(model, stream[:3], classes, ctx)
        eval_s = _timed(device, lambda: evaluate(model, stream, classes, ctx))
        evaluate(model, big[:1], classes, ctx)
        big_s = _timed(device, lambda: evaluate(model, big, classes, ctx))
        same = torch.equal(evaluate(model, batches, classes, ctx).confusion,
                           evaluate(model, big[:1], classes, ctx).confusion)
    except Exception as err:  # one variant's failure (e.g. compiling) leaves the others' figures
        return {"error": f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"}
    images = n * batch
    return {"overrides": STEP_VARIANTS[variant], "batch_size": batch, "steps": n, "warmup_s": warm,
            "train_images_per_s": images / train_s, "ld_pass_images_per_s": images / ld_s,
            "eval_images_per_s": images / eval_s, "eval_4x_batch_images_per_s": images / big_s,
            "eval_4x_batch_same_predictions": same,
            "amp_resolved": parts.config["trainer"]["amp_resolved"],
            "optimizer": {k: parts.config["optimizer"].get(k) for k in ("fused", "foreach")}}


def step_verdict(step: dict[str, dict]) -> dict[str, Any]:
    """Whether AMP bf16 + channels_last and the captured step measured faster (by :data:`FASTER`)
    than eager fp32, in training images/s: on CUDA what ``adadf.app.AUTO_AMP_ON_CUDA`` should be."""
    rate = {k: v.get("train_images_per_s") for k, v in step.items()}
    verdict: dict[str, Any] = {"faster_means": f">= {FASTER:.2f}x the training images/s",
                               "cuda": torch.cuda.is_available()}
    if rate.get("eager_fp32") and rate.get("eager_bf16_channels_last"):
        verdict["amp_faster"] = rate["eager_bf16_channels_last"] >= FASTER * rate["eager_fp32"]
    captured = {k: v for k, v in rate.items() if k.startswith("captured") and v}
    if captured:
        best = max(captured, key=captured.get)
        eager = max(v for k, v in rate.items() if k.startswith("eager") and v)
        verdict["captured_faster"] = captured[best] >= FASTER * eager
        verdict["fastest_captured"] = best
    return verdict


# -------------------------------------------------------------------------------------- report
def markdown_row(r: dict[str, Any]) -> str:
    """One row for RESULTS.md's GPU check table (the default pipeline = what auto runs here)."""
    m = r["machine"]
    default = r["default_pipeline"]
    fast = r["throughput"]["amp_bf16_channels_last"]["pipelines"][default]
    fp32 = r["throughput"]["fp32"]["pipelines"][default]
    tests = r["cuda_tests"]
    raf = r["raf_run"]
    ddp = r.get("torchrun") or {}
    projected = raf.get("projected_75_epochs_s")
    cells = [
        r["date"], m.get("gpu", f"CPU: {m['cpu']}") + (" (--quick)" if r["quick"] else ""), m["torch"],
        f"{tests['passed']}/{tests['failed']}/{tests['skipped']}", default,
        f"{fp32['model_images_per_s']:.0f} / {fp32['e2e_images_per_s']:.0f} ({fp32['e2e_over_model']:.2f})",
        f"{fast['model_images_per_s']:.0f} / {fast['e2e_images_per_s']:.0f} ({fast['e2e_over_model']:.2f})",
        f"{fast['ld_pass_images_per_s']:.0f}", f"{fast['eval_images_per_s']:.0f}", f"{r['peak_memory_mb']:.0f}",
        " / ".join(f"{t:.1f}" for t in raf.get("epoch_time_s", [])) or "failed",
        f"{raf['steady_epoch_s']:.1f}" if raf.get("steady_epoch_s") else "-",
        str(r.get("auto_pipeline")),
        " / ".join(str(v["top_level"]) for v in r["aug_ops"].values()),
        f"{projected / 60:.1f}" if projected else "-",
        (f"{ddp['epoch_time_s'][0]:.1f}" if ddp.get("epoch_time_s") else ddp.get("skipped", "failed")),
    ]
    return "| " + " | ".join(cells) + " |"


MARKDOWN_HEADER = ("| date | device | torch | CUDA tests pass/fail/skip | default pipeline | fp32 model / e2e img/s "
                   "(ratio) | bf16+CL model / e2e img/s (ratio) | LD pass img/s | eval img/s | peak MB | RAF epoch 1 / 2 / 3 s "
                   "| RAF steady epoch s | auto pipeline | aug ops / batch 64 / 256 | 75 epochs (min, projected) "
                   "| 2-GPU torchrun epoch s |\n|" + "---|" * 16)


def report(r: dict[str, Any]) -> None:
    print("\n=== GPU check ===")
    m = r["machine"]
    print(f"device: {m.get('gpu', 'no GPU')}; CPU {m['cpu']} ({m['cores']} cores); torch {m['torch']}; "
          f"{'--quick (tiny sizes)' if r['quick'] else 'full sizes'}; total {r['total_s']:.0f} s")
    t = r["cuda_tests"]
    print(f"CUDA-only tests: {t['passed']} passed, {t['failed']} failed, {t['skipped']} skipped, {t['errors']} errors"
          + "".join(f"\n  {f}" for f in t["failures"]))
    print(f"{'precision':24s} {'pipeline':11s} {'model img/s':>11s} {'e2e img/s':>10s} {'e2e/model':>9s} "
          f"{'LD img/s':>9s} {'eval img/s':>10s} {'peak MB':>8s}")
    for precision, res in r["throughput"].items():
        for name, p in res["pipelines"].items():
            print(f"{precision:24s} {name:11s} {p['model_images_per_s']:11.1f} {p['e2e_images_per_s']:10.1f} "
                  f"{p['e2e_over_model']:9.3f} {p['ld_pass_images_per_s']:9.1f} {p['eval_images_per_s']:10.1f} "
                  f"{p['e2e_peak_mem_mb']:8.0f}")
    raf = r["raf_run"]
    if raf.get("epoch_time_s"):
        print(f"experiment=raf, {r['sizes']['train']} / {r['sizes']['test']} images, {raf['precision']}, "
              f"{raf['pipeline']} pipeline: epochs {', '.join(f'{x:.1f} s' for x in raf['epoch_time_s'])}; "
              f"75 epochs projected {raf['projected_75_epochs_s'] / 60:.1f} min (wall {raf['wall_s']:.0f} s)")
    else:
        print(f"experiment=raf run failed: {raf.get('error')}")
    print(f"dataset.pipeline=auto picked: {r.get('auto_pipeline')}")
    epochs = r.get("raf_epochs") or {}
    for name, run in epochs.items():
        if isinstance(run, dict):
            steady = run.get("steady_epoch_s")
            print(f"  experiment=raf 3 epochs, {name:34s} steady epoch " + (f"{steady:.1f} s" if steady else
                                                                         str(run.get("error"))))
        else:
            print(f"  per-pipeline experiment=raf runs: {run}")
    print("aten ops per augmented batch (device recipe): " + ", ".join(
        f"batch {size}: {v['top_level']} top-level ({v['all']} in all)" for size, v in r["aug_ops"].items()))
    ddp = r.get("torchrun") or {}
    print("torchrun, 2 processes: " + (f"epoch {ddp['epoch_time_s'][0]:.1f} s" if ddp.get("epoch_time_s")
                                       else str(ddp.get("skipped") or ddp.get("error"))))
    print(f"\nthe step alone, batches on the device ({'tiny sizes' if r['quick'] else 'full sizes'}):")
    print(f"{'variant':28s} {'train img/s':>11s} {'LD img/s':>9s} {'eval img/s':>10s} {'eval 4x img/s':>13s} same")
    for name, v in r["step"].items():
        if "train_images_per_s" in v:
            print(f"{name:28s} {v['train_images_per_s']:11.1f} {v['ld_pass_images_per_s']:9.1f} "
                  f"{v['eval_images_per_s']:10.1f} {v['eval_4x_batch_images_per_s']:13.1f} "
                  f"{v['eval_4x_batch_same_predictions']}")
        else:
            print(f"{name:28s} {v.get('skipped') or v.get('error')}")
    print(f"verdict: {json.dumps(r['step_verdict'])}")
    print("\nRESULTS.md row:\n" + MARKDOWN_HEADER + "\n" + r["markdown_row"])


# -------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: seconds on any machine (CI)")
    parser.add_argument("--json", type=Path, default=Path("gpu_check.json"), help="figures (default gpu_check.json)")
    parser.add_argument("--md", type=Path, default=None, help="the RESULTS.md row (default: --json with .md)")
    parser.add_argument("--skip-tests", action="store_true", help="leave out the CUDA-only tests")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides (after --) for every measurement")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    start = time.perf_counter()
    size = sizes(args.quick)
    if size["threads"]:
        torch.set_num_threads(size["threads"])
    base = Path(os.environ.get("ADADF_CACHE_DIR") or Path.home() / ".cache" / "adadf") / "bench"
    root = throughput.write_synthetic_raf(base / f"raf-synthetic-{size['train']}-{size['test']}-{size['image_px']}px",
                                          size["train"], size["test"], size=size["image_px"])
    cuda = torch.cuda.is_available()
    results: dict[str, Any] = {
        "date": dt.date.today().isoformat(), "quick": args.quick, "machine": throughput.machine(),
        "gpus": torch.cuda.device_count() if cuda else 0, "sizes": {k: v for k, v in size.items()},
        "dataset": str(root), "overrides": args.overrides,
        "default_pipeline": "device" if cuda else "reference",  # what dataset.pipeline=auto runs here
    }
    results["cuda_tests"] = ({"skipped_by_flag": True, "passed": 0, "failed": 0, "skipped": 0, "errors": 0,
                              "failures": [], "summary": "not run"} if args.skip_tests else cuda_tests())
    results["throughput"] = {p: measure_throughput(root, size, p, args.overrides) for p in PRECISIONS}
    results["peak_memory_mb"] = max(p["e2e_peak_mem_mb"] for res in results["throughput"].values()
                                    for p in res["pipelines"].values())
    results["peak_memory_note"] = next(iter(results["throughput"]["fp32"]["pipelines"].values()))["mem_note"]
    results["raf_run"] = raf_run(root, size, 3, args.overrides)
    results["auto_pipeline"] = results["raf_run"].get("pipeline")  # what dataset.pipeline=auto picked here
    results["raf_epochs"] = raf_epochs(root, size, args.overrides)
    results["aug_ops"] = aug_ops(torch.device("cuda" if cuda else "cpu"))
    if results["gpus"] >= 2:
        results["torchrun"] = raf_run(root, size, 1, args.overrides, nproc=2)
    else:
        results["torchrun"] = {"skipped": f"{results['gpus']} GPU(s): needs 2+"}
    results["step"] = {v: measure_step(root, size, v, args.overrides) for v in STEP_VARIANTS}
    results["step_verdict"] = step_verdict(results["step"])
    results["total_s"] = time.perf_counter() - start
    results["markdown_row"] = markdown_row(results)
    report(results)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    md = args.md or args.json.with_suffix(".md")
    md.write_text(MARKDOWN_HEADER + "\n" + results["markdown_row"] + "\n")
    print(f"\nwrote {args.json} and {md}")
    return results


if __name__ == "__main__":
    main()
