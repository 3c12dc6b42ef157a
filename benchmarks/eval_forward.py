"""Evaluation's forward pass: both branches vs the target branch only, in one process.

    python benchmarks/eval_forward.py [--batch 32] [--size 224] [--backbone resnet18] [--reps 5]

Evaluation and prediction read only the target logits (``model(x, target_only=True)``); this
times that against the full dual-branch forward on the same random batch, alternating, best of N.
"""
from __future__ import annotations

import argparse
import time

import torch

from adadf.models import AdaDF


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = AdaDF(7, args.backbone).eval()
    x = torch.randn(args.batch, 3, args.size, args.size)
    modes = {"both branches": {}, "target only": {"target_only": True}}
    times: dict[str, list[float]] = {name: [] for name in modes}
    with torch.no_grad():
        for kwargs in modes.values():  # warm-up
            model(x, **kwargs)
        for _ in range(args.reps):
            for name, kwargs in modes.items():
                start = time.perf_counter()
                model(x, **kwargs)
                times[name].append(time.perf_counter() - start)
    print(f"{args.backbone}, batch {args.batch} at {args.size} px, {torch.get_num_threads()} threads, best of {args.reps}")
    for name, seconds in times.items():
        print(f"{name:>14}: {args.batch / min(seconds):7.1f} img/s")
    print(f"ratio: {min(times['both branches']) / min(times['target only']):.2f}x")


if __name__ == "__main__":
    main()
