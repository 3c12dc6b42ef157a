"""Kernel launches and input-only images/s of ``dataset.pipeline=device``'s training batch transform.

    python benchmarks/aug_launches.py [--sizes 64 256] [--images 512] [--batches 8] [--device cpu]

The transform is the RAF recipe's (``device_train_transform(make_recipe("standard", 224))``:
resize 100 -> 224, RandAugment ``rand-m5-n3-mstd0.5``, flip, normalise, RandomErasing) on uint8
100 px batches sliced from images resident in memory (no files, no DataLoader, no workers).

- **aten ops per batch**: one call of the transform under ``torch.profiler`` (CPU activity);
  ``all`` counts every event whose name starts with ``aten::`` (nested ones included: an
  ``aten::to`` and the ``aten::copy_`` it calls are two), ``top-level`` only those with no
  ``aten::`` event above them (what Python called). On a GPU every one of them is host work and
  most launch a kernel; a count that grows with the batch size means per-image host work.
- **images/s**: wall time of ``--batches`` calls after one warm-up (CPU time per image beside it);
  on CUDA the device is synchronised before the clock stops.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from adadf.data.fast import device_train_transform  # noqa: E402
from adadf.data.transforms import make_recipe  # noqa: E402


def face_like(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """Smooth uint8 [n, 3, size, size] images with fine detail and noise (real histograms, edges)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    phase = rng.uniform(0, 6, (n, 1, 1, 1))
    base = 120 + 80 * np.sin(6 * xx + phase) * np.cos(5 * yy - phase)
    detail = 25 * np.sin(40 * xx) * np.sin(37 * yy)
    images = base + detail * np.arange(1, 4).reshape(1, 3, 1, 1) / 3 + rng.normal(0, 3, (n, 3, size, size))
    return torch.from_numpy(np.clip(images, 0, 255).astype(np.uint8))


def aten_counts(fn, *args) -> dict[str, int]:
    """aten events of one call of ``fn(*args)``: all of them, and the top-level ones."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn(*args)
    events = [e for e in prof.events() if e.name.startswith("aten::")]

    def nested(event) -> bool:
        parent = event.cpu_parent
        while parent is not None:
            if parent.name.startswith("aten::"):
                return True
            parent = parent.cpu_parent
        return False

    return {"all": len(events), "top_level": sum(not nested(e) for e in events)}


def images_per_s(transform, images: torch.Tensor, batch_size: int, batches: int) -> dict[str, float]:
    """Wall images/s and CPU ms per image of ``batches`` calls on consecutive slices of ``images``."""
    def batch(k: int) -> torch.Tensor:
        start = (k * batch_size) % max(1, images.shape[0] - batch_size + 1)
        return images[start:start + batch_size]

    sync = torch.cuda.synchronize if images.is_cuda else (lambda: None)
    transform(batch(0))
    sync()
    wall, cpu = time.perf_counter(), time.process_time()
    for k in range(batches):
        transform(batch(k + 1))
    sync()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    n = batches * batch_size
    return {"images_per_s": n / wall, "cpu_ms_per_image": cpu / n * 1e3}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256], help="batch sizes")
    parser.add_argument("--images", type=int, default=512, help="resident 100 px images")
    parser.add_argument("--batches", type=int, default=8, help="timed batches per size")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    transform = device_train_transform(make_recipe("standard", 224))
    images = face_like(max(args.images, max(args.sizes)), 100).to(device)
    torch.manual_seed(0)
    results: dict = {"device": str(device), "torch": torch.__version__, "sizes": {}}
    for size in args.sizes:
        transform(images[:size])  # warm-up: constants on the device, allocator
        counts = aten_counts(transform, images[:size])
        speed = images_per_s(transform, images, size, args.batches)
        results["sizes"][size] = {**counts, **speed}
        print(f"batch {size:4d}: {counts['all']:6d} aten ops ({counts['top_level']} top-level), "
              f"{speed['images_per_s']:8.1f} img/s, {speed['cpu_ms_per_image']:.3f} CPU ms/img")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
