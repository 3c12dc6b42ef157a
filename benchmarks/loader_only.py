"""The device pipeline's data path alone: uint8 batches from the training loader to the training device,
no augmentation, no model; DataLoader over the cache (with and without workers) vs resident data.

    python benchmarks/loader_only.py                       # RAF-DB layout, 3,000 synthetic 100 px faces
    python benchmarks/loader_only.py --train 12271 --epochs 3 --json out.json

Per configuration: images/s over whole training epochs (each epoch's iterator started inside the
timed block, as training starts one per pass), and the CPU cores busy (this process and its workers).
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from throughput import Meter, compose_cfg, machine, write_synthetic_raf

import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from adadf import app  # noqa: E402
from adadf.engine.trainer import _reseed  # noqa: E402

CONFIGS = {  # name -> dataset overrides
    "dataloader, 2 workers": {"resident": False, "num_workers": 2},
    "dataloader, no workers": {"resident": False, "num_workers": 0},
    "resident, no workers": {"resident": True, "num_workers": 0},
}


def measure(cfg, overrides: dict, device: torch.device, epochs: int) -> dict:
    data = app.build_data(OmegaConf.merge(cfg.dataset, {"pipeline": "device", **overrides}), cfg.seed, device)
    loader = data.train_loader
    images = 0
    for images_, _ in loader:  # warm-up epoch: page cache, worker start-up paid once
        images_.to(device)
    with Meter(device) as m:
        for epoch in range(1, epochs + 1):
            _reseed(loader, cfg.seed, epoch, 0)
            for x, y in loader:
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                images += x.shape[0]
    return {"images_per_s": images / m.wall_s, "cores": m.cores, "loader": type(loader).__name__,
            "batches_per_epoch": len(loader)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=int, default=3000)
    parser.add_argument("--test", type=int, default=750)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides (after --)")
    args = parser.parse_args(argv)
    base = Path(os.environ.get("ADADF_CACHE_DIR") or Path.home() / ".cache" / "adadf") / "bench"
    root = write_synthetic_raf(base / f"raf-synthetic-{args.train}-{args.test}", args.train, args.test)
    cfg = compose_cfg(["dataset=raf", f"dataset.root={root}", "logger=none", *args.overrides])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    results = {"machine": {**machine(), "device": str(device), "train": args.train, "epochs": args.epochs,
                           "batch_size": cfg.dataset.batch_size}, "configs": {}}
    for name, overrides in CONFIGS.items():
        results["configs"][name] = figures = measure(cfg, overrides, device, args.epochs)
        print(f"{name}: {figures['images_per_s']:,.0f} img/s, {figures['cores']:.2f} cores busy ({figures['loader']})")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
