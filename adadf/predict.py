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
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset

from adadf.atomic import save_image
from adadf.cli import job, workers_option
from adadf.conf import CONFIG_PATH
from adadf.errors import UserError
from adadf.threads import bar_disabled, threaded_map, torch_threads
from adadf.words import counted
from adadf.faces.detector import LANDMARK_NAMES

log = logging.getLogger(__name__)


def list_inputs(spec: str | os.PathLike) -> list[Path]:
    """Image paths from an image file, a folder (images in it and below, sorted; links to folders
    followed, symbolic link loops skipped with a warning) or a list file (one path per line,
    relative paths against the list file's folder; blank and # lines skipped)."""
    from adadf.data.images import is_image_name
    from adadf.data.walk import is_link_loop, list_tree
    from adadf.faces.video import is_video_name

    path = Path(spec).expanduser()
    if path.is_dir():
        files = [path / rel for rel in list_tree(path)[0]]
        found = sorted(p for p in files if is_image_name(p.name))
        videos = sorted(p for p in files if is_video_name(p.name))
        hint = f"; predict a video on its own: input={videos[0]}" if videos else ""
        if not found:
            raise UserError(f"input={spec}: no image files in this folder ({len(videos)} videos{hint})")
        if videos:
            log.warning("input=%s: not predicting %s in the folder, only its %s%s",
                        spec, counted(len(videos), "video"), counted(len(found), "image"), hint)
        return [p.absolute() for p in found]
    if not path.is_file():
        problem = "a symbolic link loop" if is_link_loop(path) else "no such file or folder"
        raise UserError(f"input={spec}: {problem}; expected an image, a folder or a list file")
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
    from adadf.app import resolve_device

    if cfg.checkpoint is None:
        raise UserError("checkpoint: missing; expected checkpoint=PATH (an adadf .pt or an Ada-DF .pth.tar)")
    if cfg.input is None:
        raise UserError("input: missing; expected input=PATH (an image, a folder of images or a list file)")
    if int(cfg.batch_size) < 1:
        raise UserError(f"batch_size={cfg.batch_size}: expected an integer >= 1")
    out = Path(_absolute(cfg.output, to_absolute_path)) if cfg.output else out_dir / "predictions.csv"
    check_output(out, cfg.output)  # before any work: not after every prediction was computed
    checkpoint = inference.read_checkpoint(_absolute(cfg.checkpoint, to_absolute_path),
                                           bool(cfg.get("allow_pickle", False)))
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
    source = Path(_absolute(cfg.input, to_absolute_path))
    paths = None if _is_video(source) else list_inputs(source)
    model_size = int(dataset.get("image_size") or 0)
    transform = inference.image_transform(dataset)
    if paths is None or uses_faces(str(cfg.faces), paths, model_size, float(cfg.auto_factor)):
        return predict_faces_command(cfg, model, transform, names, model_size, device, source, paths, out)
    done, probs, skipped = predict_files(
        model, paths, transform, tta=bool(cfg.tta),
        batch_size=int(cfg.batch_size), num_workers=int(cfg.num_workers), device=device,
    )
    if not done:
        raise UserError(f"input={cfg.input}: none of the {len(paths)} images could be read (see the warnings)")
    write_predictions(done, probs, names, out)
    log.info("%s predicted%s -> %s", counted(len(done), "image"),
             f", {len(skipped)} unreadable skipped" if skipped else "", out)
    return {"predictions": out, "num_predicted": len(done), "skipped": [str(p) for p in skipped]}


# ------------------------------------------------------------------------------------ faces
# faces=detect|auto, and video input: every face found in a photo or frame is aligned like
# adadf-align does and predicted on its own (docs/faces.md).
LANDMARK_COLUMNS = [f"{name}_{axis}" for name in LANDMARK_NAMES for axis in ("x", "y")]


def _is_video(path: Path) -> bool:
    from adadf.faces.video import is_video_name

    return path.is_file() and is_video_name(path.name)


def _image_size(path: Path) -> tuple[int, int] | None:
    """Width and height from the file header (nothing decoded); None when unreadable (reported
    when the image is decoded for real)."""
    from adadf.data.decode import image_size

    try:
        return image_size(path)
    except UserError:
        return None


def uses_faces(mode: str, paths: Sequence[Path], model_size: int, auto_factor: float = 2.0) -> bool:
    """Whether the run goes through face detection: ``detect`` always, ``none`` never, ``auto`` when
    at least one image is a photo rather than a face crop (:func:`adadf.faces.wants_detection`)."""
    from adadf.faces import wants_detection

    if mode != "auto":
        return wants_detection(mode, (0, 0), model_size)  # also refuses an unknown mode
    sizes = (_image_size(p) for p in paths)
    return any(size is not None and wants_detection(mode, size, model_size, auto_factor) for size in sizes)


class FacePredictor:
    """Faces of one image (or video frame) -> aligned crops -> class probabilities.

    ``mode`` decides per image whether to detect (:func:`adadf.faces.wants_detection`); without
    detection the whole image is one region. The detector is built on first use only.
    """

    def __init__(self, model: torch.nn.Module, transform: Callable, *, mode: str, model_size: int,
                 auto_factor: float, padding: float, detector_config: dict[str, Any], tta: bool,
                 device: torch.device | str) -> None:
        self.model, self.transform = model.eval(), transform
        self.mode, self.model_size, self.auto_factor, self.padding = mode, model_size, auto_factor, padding
        self.detector_config, self.tta, self.device = detector_config, tta, device
        self._detector = None
        self._lock = threading.Lock()  # worker threads share one detector, built once

    @property
    def detector(self):
        with self._lock:
            if self._detector is None:
                from adadf.faces import build_detector

                self._detector = build_detector(self.detector_config)
        return self._detector

    def __call__(self, image) -> tuple[list, torch.Tensor]:
        """(regions: FaceCrop list, most confident face first; probabilities [N, C] on the CPU)."""
        from adadf.faces import face_crops, wants_detection, whole_image
        from adadf.inference import predict_logits

        if wants_detection(self.mode, image.size, self.model_size, self.auto_factor):
            regions = face_crops(image, self.detector, self.model_size, self.padding)
        else:
            regions = [whole_image(image)]
        if not regions:
            return [], torch.zeros(0, 0)
        batch = torch.stack([self.transform(r.crop) for r in regions])  # [N, 3, S, S] or [N, K, 3, S, S]
        logits = predict_logits(self.model, batch.to(self.device), tta=self.tta)  # [N, C]
        return regions, logits.softmax(1).cpu()


def face_rows(path: Path, regions: Sequence, probs: torch.Tensor, names: Sequence[str],
              frame: tuple[int, float] | None = None) -> list[dict[str, Any]]:
    """One CSV row per region: path, [frame, time_s], face, box, score, landmarks, prediction,
    confidence, prob_<class>. A whole-image region has an empty score and landmarks."""
    import math

    rows = []
    for i, (region, p) in enumerate(zip(regions, probs)):
        row: dict[str, Any] = {"path": str(path)}
        if frame is not None:
            row["frame"], row["time_s"] = frame
        row["face"] = i
        row.update(zip(("x1", "y1", "x2", "y2"), (round(float(v), 2) for v in region.box)))
        face = region.face
        row["score"] = float(face.score) if face is not None else math.nan
        points = face.landmarks.ravel().tolist() if face is not None else [math.nan] * 10
        row.update(zip(LANDMARK_COLUMNS, (round(float(v), 2) for v in points)))
        row["prediction"], row["confidence"] = names[int(p.argmax())], float(p.max())
        row.update({f"prob_{name}": float(p[j]) for j, name in enumerate(names)})
        rows.append(row)
    return rows


def _labels(probs: torch.Tensor, names: Sequence[str]) -> list[str]:
    return [f"{i}: {names[int(p.argmax())]} {float(p.max()):.2f}" for i, p in enumerate(probs)]


def _draw(image, regions: Sequence, probs: torch.Tensor, names: Sequence[str]):
    from adadf.faces.draw import annotate

    landmarks = [r.face.landmarks if r.face is not None else None for r in regions]
    return annotate(image, [r.box for r in regions], _labels(probs, names), landmarks)


def predict_face_images(predictor: FacePredictor, paths: Sequence[Path], names: Sequence[str], *,
                        annotate_dir: Path | None = None, root: Path | None = None,
                        progress: bool = True, workers: int = 1) -> dict[str, Any]:
    """Rows for every region of every image; unreadable images and images without a face are
    warned about (one line each) and listed. ``annotate_dir``: a copy of each image with boxes and
    labels, at its path relative to ``root`` (the input folder) or under its own name. ``workers``
    threads each read, detect and predict one image at a time; the rows keep the input order."""
    from adadf.data.images import load_rgb

    def one(path: Path) -> tuple[UserError | None, list, torch.Tensor | None, Path | None]:
        try:
            image = load_rgb(path)
        except UserError as err:
            return err, [], None, None
        regions, probs = predictor(image)
        target = None
        if annotate_dir is not None:
            rel = path.relative_to(root) if root is not None and root in path.parents else Path(path.name)
            target = save_image(_draw(image, regions, probs, names), annotate_dir / rel, 90, jpeg_fallback=True)
        return None, regions, probs, target

    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    no_face: list[str] = []
    annotated: list[str] = []
    results = threaded_map(one, paths, workers, desc="predict", progress=progress and len(paths) > 1)
    for path, (error, regions, probs, target) in zip(paths, results):
        if error is not None:
            log.warning("skipped %s", error)
            skipped.append(str(path))
            continue
        if not regions:
            log.warning("%s: no face found", path)
            no_face.append(str(path))
        rows += face_rows(path, regions, probs, names)
        if target is not None:
            annotated.append(str(target))
    return {"rows": rows, "skipped": skipped, "no_face": no_face, "annotated": annotated}


def predict_face_video(predictor: FacePredictor, path: Path, names: Sequence[str], *, every: int = 1,
                       annotate_to: Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Rows for every region of every ``every``-th frame (with ``frame`` and ``time_s`` columns);
    ``annotate_to``: an MP4 of all frames, each with the boxes of the latest predicted frame. The
    result records the frames read against those the container declares, and the warning when a
    cut file ended early (``incomplete``)."""
    import contextlib

    from tqdm import tqdm

    from adadf.faces.video import FrameCount, probe, read_frames, video_writer

    info = probe(path)
    count = FrameCount()
    rows: list[dict[str, Any]] = []
    frames_without_face = 0
    predicted = 0
    with contextlib.ExitStack() as stack:
        write = stack.enter_context(video_writer(annotate_to, info.fps)) if annotate_to is not None else None
        bar = stack.enter_context(tqdm(total=info.frames, desc="video", unit="frame",
                                        disable=bar_disabled(progress)))
        regions, probs = [], torch.zeros(0, 0)
        for frame in read_frames(path, every=1 if write is not None else every, count=count):  # annotating: all
            bar.update()
            if frame.index % every == 0:
                regions, probs = predictor(frame.image)
                predicted += 1
                frames_without_face += not regions
                rows += face_rows(path, regions, probs, names, frame=(frame.index, round(frame.time_s, 4)))
            if write is not None:
                write(_draw(frame.image, regions, probs, names))
    if frames_without_face:
        log.warning("%s: no face found in %d of %d predicted frames", path, frames_without_face, predicted)
    return {"rows": rows, "frames": predicted, "frames_without_face": frames_without_face,
            "frames_read": count.read, "frames_declared": count.declared, "incomplete": count.incomplete,
            "annotated": [str(annotate_to)] if annotate_to is not None else []}


def write_face_predictions(rows: Sequence[dict[str, Any]], names: Sequence[str], out: Path,
                           video: bool = False) -> None:
    """The per-face CSV (columns as :func:`face_rows`), header included when no face was found."""
    import pandas as pd

    from adadf.atomic import atomic_open

    columns = ["path", *(["frame", "time_s"] if video else []), "face", "x1", "y1", "x2", "y2", "score",
               *LANDMARK_COLUMNS, "prediction", "confidence", *[f"prob_{n}" for n in names]]
    with atomic_open(out) as f:
        f.write(pd.DataFrame(list(rows), columns=columns).to_csv(index=False))


def predict_faces_command(cfg: DictConfig, model: torch.nn.Module, transform: Callable, names: Sequence[str],
                          model_size: int, device: torch.device | str, source: Path,
                          paths: Sequence[Path] | None, out: Path) -> dict[str, Any]:
    """predict_command's face path: ``paths`` None means ``source`` is a video."""
    from omegaconf import OmegaConf

    every = int(cfg.every)
    if every < 1:
        raise UserError(f"every={every}: expected an integer >= 1")
    workers = workers_option(cfg.workers)
    predictor = FacePredictor(
        model, transform, mode=str(cfg.faces), model_size=model_size,
        auto_factor=float(cfg.auto_factor), padding=float(cfg.padding),
        detector_config=OmegaConf.to_container(cfg.detector, resolve=True), tta=bool(cfg.tta), device=device)
    annotate, progress = bool(cfg.annotate), bool(cfg.progress)
    if paths is None:
        video_out = out.parent / f"{source.stem}_annotated.mp4" if annotate else None
        result = predict_face_video(predictor, source, names, every=every, annotate_to=video_out, progress=progress)
        write_face_predictions(result["rows"], names, out, video=True)
        log.info("%s in %s of %s%s -> %s", counted(len(result["rows"]), "face"),
                 counted(result["frames"], "frame"), source,
                 " (incomplete: see the warning)" if result["incomplete"] else "", out)
        return {"predictions": out, "num_predicted": len(result["rows"]), **result}
    root = source if source.is_dir() else None
    with torch_threads(cfg.torch_threads):  # per worker thread (a video is one thread: left as it is)
        result = predict_face_images(predictor, paths, names, root=root, progress=progress, workers=workers,
                                     annotate_dir=out.parent / "annotated" if annotate else None)
    if len(result["skipped"]) == len(paths):
        raise UserError(f"input={cfg.input}: none of the {len(paths)} images could be read (see the warnings)")
    write_face_predictions(result["rows"], names, out)
    log.info("%s in %s predicted%s -> %s", counted(len(result["rows"]), "face"),
             counted(len(paths) - len(result["skipped"]), "image"),
             "".join(f", {len(result[k])} {k.replace('_', ' ')}" for k in ("skipped", "no_face") if result[k]), out)
    return {"predictions": out, "num_predicted": len(result["rows"]), **result}


def check_output(out: Path, spec: str | None) -> None:
    """A CSV path that can be written: not a folder, and no file where a folder of its path must be."""
    key = f"output={spec}" if spec else str(out)
    if out.is_dir():
        raise UserError(f"{key}: is a folder; expected the path of the CSV file to write "
                        f"(e.g. output={out / 'predictions.csv'})")
    parent = next((p for p in out.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise UserError(f"{key}: {parent} is a file, not a folder; expected the path of the CSV file to write")


def _absolute(path: str, to_absolute: Callable[[str], str]) -> str:
    """A user path against the launch directory (Hydra's, when running under it)."""
    path = str(Path(str(path)).expanduser())
    try:
        return to_absolute(path)
    except ValueError:  # not under Hydra (library use)
        return str(Path(path).absolute())


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="predict")
@job
def _main(cfg: DictConfig) -> None:
    from adadf.app import command_dir

    predict_command(cfg, command_dir(cfg, "predict"))


def main() -> None:
    """``python -m adadf.predict`` / ``adadf-predict``."""
    from adadf.cli import launch

    launch(_main)


if __name__ == "__main__":
    main()
