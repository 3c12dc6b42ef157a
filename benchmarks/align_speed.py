"""Throughput of ``adadf-align`` (images/s) for several worker/thread settings, on generated trees.

    python benchmarks/align_speed.py                       # both trees, the default settings grid
    python benchmarks/align_speed.py --count 500 --settings 2x1 2x2

Trees (written once under a temp dir, from scikit-image's bundled faces; nothing downloaded):

- ``test``: a tree like the one tests/test_align.py aligns: the astronaut portrait (512 px), a
  two-face composite (460x300), 6 LFW faces (230 px) and a plain no-face image -- 9 images;
- ``lfw256``: ``--count`` 256x256 PNGs: skimage's 100 LFW faces (25 px) upscaled to 160-224 px
  (bicubic), mirrored or not, pasted at varying offsets on a grey 256 px canvas.

Each setting ``WxT`` runs ``align_tree`` with W worker threads and torch.set_num_threads(T) into a
fresh output folder (size 224, MTCNN on the CPU), ``--repeat`` times (median), after one warm-up
image. Prints one line per tree and setting: images per wall second, images per CPU-second of
this process (steadier on a busy machine) and the load average, since wall-clock figures on a
shared machine drift.
"""
from __future__ import annotations

import argparse
import logging
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def lfw_faces() -> np.ndarray:
    from skimage import data

    return np.load(Path(data.__file__).parent / "lfw_subset.npy")[:100]  # [100, 25, 25], faces


def write_lfw256(root: Path, count: int) -> None:
    rng = np.random.default_rng(0)
    faces = lfw_faces()
    folder = root / "train" / "faces"
    folder.mkdir(parents=True)
    for i in range(count):
        face = Image.fromarray((faces[i % 100] * 255).round().astype(np.uint8)).convert("RGB")
        side = int(rng.integers(160, 225))
        face = face.resize((side, side), Image.Resampling.BICUBIC)
        if rng.random() < 0.5:
            face = face.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        canvas = Image.new("RGB", (256, 256), (128, 128, 128))
        canvas.paste(face, tuple(int(v) for v in rng.integers(0, 256 - side + 1, size=2)))
        canvas.save(folder / f"{i:05d}.png")


def write_test_tree(root: Path) -> None:
    from skimage import data

    portrait = Image.fromarray(data.astronaut())
    (root / "train" / "happy").mkdir(parents=True)
    (root / "test" / "sad").mkdir(parents=True)
    portrait.save(root / "train" / "happy" / "astronaut.jpg", quality=95)
    face = portrait.crop((140, 20, 310, 215))
    composite = Image.new("RGB", (460, 300), (200, 200, 200))
    composite.paste(face, (10, 50))
    composite.paste(face.resize((235, 262)), (225, 38))
    composite.save(root / "train" / "happy" / "two.png")
    faces = lfw_faces()
    for i in range(6):
        canvas = Image.new("RGB", (230, 230), (128, 128, 128))
        canvas.paste(Image.fromarray((faces[i] * 255).round().astype(np.uint8)).resize((150, 150)), (40, 40))
        canvas.save(root / "test" / "sad" / f"lfw{i}.png")
    Image.new("RGB", (190, 190), (90, 140, 60)).save(root / "test" / "sad" / "grass.jpg")


def measure(src: Path, work: Path, detector, workers: int, threads: int) -> tuple[int, float, float]:
    """(images, wall seconds, CPU seconds of this process)."""
    from adadf.align import AlignSettings, align_tree

    torch.set_num_threads(threads)
    out = work / f"out-{src.name}-{workers}x{threads}"
    start, cpu = time.perf_counter(), time.process_time()
    result = align_tree(src, out, detector, AlignSettings(size=224), workers=workers, progress=False)
    return result["images"], time.perf_counter() - start, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=300, help="images in the lfw256 tree")
    parser.add_argument("--settings", nargs="+", default=["1x1", "1x2", "2x1", "2x2", "4x1"],
                        help="WORKERSxTORCH_THREADS")
    parser.add_argument("--repeat", type=int, default=3, help="runs per tree and setting; the median is printed")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from adadf.faces.mtcnn import MTCNNDetector

    detector = MTCNNDetector(device="cpu")
    detector.detect(Image.new("RGB", (256, 256)))  # warm-up
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
          f"{torch.__version__}, load average {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        trees = {"test": work / "test", "lfw256": work / "lfw256"}
        write_test_tree(trees["test"])
        write_lfw256(trees["lfw256"], args.count)
        for name, src in trees.items():
            for setting in args.settings:
                workers, threads = (int(v) for v in setting.split("x"))
                runs = [measure(src, work / f"run{r}", detector, workers, threads) for r in range(args.repeat)]
                n = runs[0][0]
                seconds = float(np.median([t for _, t, _ in runs]))
                cpu = float(np.median([c for _, _, c in runs]))
                print(f"{name:7s} {n:4d} images  workers={workers} torch_threads={threads}: "
                      f"{n / seconds:6.1f} images/s, {n / cpu:5.1f} per CPU-second  (median of {len(runs)}: "
                      f"{seconds:.2f} s; load {os.getloadavg()[0]:.2f})", flush=True)


if __name__ == "__main__":
    main()
