"""Run a trained checkpoint on images and write one CSV row per image.

    python -m adadf.predict checkpoint=best.pt input=face.jpg              # one image
    python -m adadf.predict checkpoint=best.pt input=faces/ tta=true       # a folder (recursive)
    adadf-predict checkpoint=model_best.pth.tar dataset=raf input=list.txt  # a list file

``predictions.csv`` (in the output dir, or ``output=PATH``) has the columns ``path, prediction,
confidence, prob_<class>...``. Images are preprocessed with the test transform of the dataset the
checkpoint was trained on; ``tta=true`` also averages over horizontally mirrored images. Files that
cannot be read are reported with a warning and skipped.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset

from adadf.errors import UserError

log = logging.getLogger(__name__)

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")


def list_inputs(spec: str | os.PathLike) -> list[Path]:
    """Image paths from an image file, a folder (images in it and below, sorted) or a list file
    (one path per line, relative paths against the list file's folder; blank and # lines skipped)."""
    from adadf.data.images import is_image_name

    path = Path(spec).expanduser()
    if path.is_dir():
        found = sorted(p for p in path.rglob("*") if p.is_file() and is_image_name(p.name))
        if not found:
            raise UserError(f"input={spec}: no image files in this folder")
        return [p.absolute() for p in found]
    if not path.is_file():
        raise UserError(f"input={spec}: no such file or folder; expected an image, a folder or a list file")
    if is_image_name(path.name):
        return [path.absolute()]
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"input={spec}: cannot read the list file ({type(err).__name__})") from None
    entries = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not entries:
        raise UserError(f"input={spec}: the list file names no image")
    return [(path.parent / Path(e).expanduser()).absolute() for e in entries]


class ImageFiles(Dataset):
    """Decoded, transformed images; an unreadable file yields its error message instead."""

    def __init__(self, paths: Sequence[Path], transform: Callable) -> None:
        self.paths = list(paths)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str | None]:
        from adadf.data.images import load_rgb

        try:
            return i, self.transform(load_rgb(self.paths[i])), None
        except UserError as err:
            return i, None, str(err)


def _collate(items: list) -> tuple[list[int], torch.Tensor | None, list[tuple[int, str]]]:
    ok = [(i, x) for i, x, _ in items if x is not None]
    failed = [(i, msg) for i, x, msg in items if x is None]
    images = torch.stack([x for _, x in ok]) if ok else None
    return [i for i, _ in ok], images, failed


def predict_files(model: torch.nn.Module, paths: Sequence[Path], transform: Callable, *,
                  tta: bool = False, batch_size: int = 64, num_workers: int = 0,
                  device: torch.device | str = "cpu") -> tuple[list[Path], torch.Tensor, list[Path]]:
    """Class probabilities for every readable image.

    Returns (paths predicted, probabilities [N, C] on the CPU, paths skipped as unreadable).
    """
    from adadf.inference import predict_logits

    loader = DataLoader(ImageFiles(paths, transform), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, collate_fn=_collate)
    done: list[Path] = []
    probs: list[torch.Tensor] = []
    skipped: list[Path] = []
    model.eval()
    for indices, images, failed in loader:
        for i, message in failed:
            log.warning("skipped %s", message)
            skipped.append(paths[i])
        if images is None:
            continue
        logits = predict_logits(model, images.to(device), tta=tta)  # [B, C]
        probs.append(logits.softmax(1).cpu())
        done += [paths[i] for i in indices]
    return done, (torch.cat(probs) if probs else torch.zeros(0, 0)), skipped


def write_predictions(paths: Sequence[Path], probs: torch.Tensor, names: Sequence[str], out: Path) -> None:
    """CSV: path, prediction (class name), confidence (its probability), prob_<class> per class."""
    import pandas as pd

    from adadf.tracking.files import write_text_atomic

    frame = pd.DataFrame({"path": [str(p) for p in paths]})
    if len(paths):
        frame["prediction"] = [names[i] for i in probs.argmax(1).tolist()]
        frame["confidence"] = probs.max(1).values.tolist()
    else:
        frame["prediction"], frame["confidence"] = [], []
    for j, name in enumerate(names):
        frame[f"prob_{name}"] = probs[:, j].tolist() if len(paths) else []
    write_text_atomic(out, frame.to_csv(index=False))


def predict_command(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """The composition root of the command: checkpoint + inputs -> predictions.csv."""
    from hydra.utils import to_absolute_path

    from adadf import inference
    from adadf.train import resolve_device

    if cfg.checkpoint is None:
        raise UserError("checkpoint: missing; expected checkpoint=PATH (an adadf .pt or an Ada-DF .pth.tar)")
    if cfg.input is None:
        raise UserError("input: missing; expected input=PATH (an image, a folder of images or a list file)")
    if int(cfg.batch_size) < 1:
        raise UserError(f"batch_size={cfg.batch_size}: expected an integer >= 1")
    checkpoint = inference.read_checkpoint(_absolute(cfg.checkpoint, to_absolute_path))
    dataset = inference.dataset_config(checkpoint, cfg.get("dataset"), "python -m adadf.predict")
    num_classes = checkpoint.num_classes or int(dataset.get("num_classes", 0))
    if dataset.get("num_classes") is not None and checkpoint.num_classes not in (None, dataset["num_classes"]):
        raise UserError(
            f"{checkpoint.path}: checkpoint has {checkpoint.num_classes} classes but dataset.num_classes="
            f"{dataset['num_classes']}; expected a checkpoint trained on the same classes"
        )
    names = inference.class_names(checkpoint, dataset, num_classes)
    device = resolve_device(str(cfg.device))
    backbone = cfg.backbone.name if cfg.get("backbone") else None
    model = inference.load_model(checkpoint, num_classes, backbone, device)
    paths = list_inputs(_absolute(cfg.input, to_absolute_path))
    done, probs, skipped = predict_files(
        model, paths, inference.image_transform(dataset), tta=bool(cfg.tta),
        batch_size=int(cfg.batch_size), num_workers=int(cfg.num_workers), device=device,
    )
    if not done:
        raise UserError(f"input={cfg.input}: none of the {len(paths)} images could be read (see the warnings)")
    out = Path(_absolute(cfg.output, to_absolute_path)) if cfg.output else out_dir / "predictions.csv"
    write_predictions(done, probs, names, out)
    log.info("%d images predicted%s -> %s", len(done),
             f", {len(skipped)} unreadable skipped" if skipped else "", out)
    return {"predictions": out, "num_predicted": len(done), "skipped": [str(p) for p in skipped]}


def _absolute(path: str, to_absolute: Callable[[str], str]) -> str:
    """A user path against the launch directory (Hydra's, when running under it)."""
    path = str(Path(str(path)).expanduser())
    try:
        return to_absolute(path)
    except ValueError:  # not under Hydra (library use)
        return str(Path(path).absolute())


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="predict")
def main(cfg: DictConfig) -> None:
    """``python -m adadf.predict`` / ``adadf-predict``."""
    from adadf.evaluate import output_dir

    predict_command(cfg, output_dir())


if __name__ == "__main__":
    main()
