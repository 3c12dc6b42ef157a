"""CPU time per image of each step of the small_first input pipeline (was `fast`), on one core.

    python benchmarks/pipeline_steps.py [--train 3000] [--batches 10]

Uses the RAF-DB layout dataset that ``throughput.py`` writes (same cache), the RAF recipe at
224 px, and ``time.process_time`` on one torch thread, so the figures add up to the pipeline's CPU
cost per image (benchmarks/RESULTS.md explains what they mean for the 10x target).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402
from torch.utils.data import default_collate  # noqa: E402

from adadf.data.fast import (  # noqa: E402
    CachedImageDataset, ResizeNormalizeErase, SmallImageAugment, build_cache, device_train_transform,
)
from adadf.data.raf import read_raf  # noqa: E402
from adadf.data.transforms import make_recipe  # noqa: E402
from throughput import write_synthetic_raf  # noqa: E402


def cpu_ms(fn: Callable[[], object], repeat: int, per: int) -> float:
    """CPU milliseconds per item of ``fn`` (which handles ``per`` items), after one warm-up call."""
    fn()
    start = time.process_time()
    for _ in range(repeat):
        fn()
    return (time.process_time() - start) / repeat / per * 1e3


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=3000)
    parser.add_argument("--test", type=int, default=750)
    parser.add_argument("--batches", type=int, default=10, help="batches per step measurement")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    base = Path(os.environ.get("ADADF_CACHE_DIR") or Path.home() / ".cache" / "adadf") / "bench"
    root = write_synthetic_raf(base / f"raf-synthetic-{args.train}-{args.test}", args.train, args.test)
    train, _ = read_raf(root)
    recipe = make_recipe("standard", 224)
    size = 100
    path = build_cache(train, size, split="train")
    n, bs = args.batches, args.batch_size
    plain = CachedImageDataset(path, list(train.labels))
    augmented = CachedImageDataset(path, list(train.labels), SmallImageAugment(recipe, size))
    batch_tf = ResizeNormalizeErase(recipe.image_size, recipe.mean, recipe.std, recipe.erasing_p, recipe.erasing_scale)

    device_tf = device_train_transform(recipe)
    plain_batch = default_collate([plain[i] for i in range(bs)])[0]
    items = [augmented[i] for i in range(bs)]
    images = default_collate(items)[0]
    resized = batch_tf.resize(images)
    normalized = batch_tf.normalize(resized)
    steps = {
        "read from the memory-mapped cache": cpu_ms(lambda: [plain[i] for i in range(bs)], n, bs),
        "RandAugment + flip at the stored size (workers)": cpu_ms(lambda: [augmented[i] for i in range(bs)], n, bs),
        "collate": cpu_ms(lambda: default_collate(items), n, bs),
        f"resize {size} -> {recipe.image_size}": cpu_ms(lambda: batch_tf.resize(images), n, bs),
        "normalise to float32": cpu_ms(lambda: batch_tf.normalize(resized), n, bs),
        "RandomErasing": cpu_ms(lambda: batch_tf.erase(normalized.clone()), n, bs)
        - cpu_ms(lambda: normalized.clone(), n, bs),
        "batched RandAugment + flip at the stored size": cpu_ms(lambda: device_tf.flip(device_tf.augment(plain_batch)), n, bs),
    }
    fast_steps = [k for k in steps if not k.startswith(("read", "batched"))]  # augment includes the read
    device_steps = [k for k in steps if not k.startswith("RandAugment")]
    total = sum(steps[k] for k in fast_steps)
    device_total = sum(steps[k] for k in device_steps)
    for name, ms in steps.items():
        print(f"{name:50s} {ms:7.3f} ms/img")
    print(f"{'total, pipeline=small_first (CPU ms/img, one core)':50s} {total:7.3f} ms/img = {1e3 / total:.0f} img/core-s")
    print(f"{'total, batched at the stored size':50s} {device_total:7.3f} ms/img = {1e3 / device_total:.0f} img/core-s")
    return {**steps, "total": total, "device_total": device_total}


if __name__ == "__main__":
    main()
