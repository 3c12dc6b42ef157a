"""Align the faces of a dataset tree: ``adadf-align input=<root> output=<new root>``.

    adadf-align input=datasets/sfew output=datasets/sfew-aligned            # 224 px crops
    python -m adadf.align input=photos/ output=photos-aligned size=112 multiple=skip

Every image under ``input`` (any layout: SFEW, AffectNet, class folders, a flat folder) is read,
its face found by the detector (MTCNN by default), aligned onto the five-point template
(:mod:`adadf.faces.geometry`) and written at the same relative path under ``output``, in the same
format. Other files (label CSVs, lists) are copied as they are, so ``dataset.root=<output>`` works
like the original root. Hidden files and folders are left out.

- several faces: ``multiple=largest`` (default) keeps the largest, ``confident`` the most confident,
  ``skip`` writes nothing;
- no face: ``no_face=center`` (default) writes the centre square of the whole image, resized (so
  every labelled image still exists), ``skip`` writes nothing;
- both are listed, with unreadable images, in ``<output>/align_report.csv`` (``report=PATH``
  elsewhere): columns ``path, status, faces, written, detail``;
- resumable: an output that exists is not redone (its report row is kept from the earlier run);
- every file is written atomically, so an interrupted run leaves no half image;
- the output root may not be, or lie inside, the input root (nothing is ever written there).

Hydra writes nothing of its own here (no ``outputs/`` dir, no ``.hydra``): the log goes to the
terminal and the only files are those under ``output``.
"""
from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from adadf.atomic import atomic_path, save_image
from adadf.cli import job, workers_option
from adadf.errors import UserError
from adadf.threads import threaded_map, torch_threads

log = logging.getLogger(__name__)

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")
REPORT_NAME = "align_report.csv"
REPORT_COLUMNS = ("path", "status", "faces", "written", "detail")
MULTIPLE_POLICIES = ("largest", "confident", "skip")
NO_FACE_POLICIES = ("center", "skip")


@dataclass
class ReportRow:
    """One image that did not go plainly (one face, written)."""

    path: str  # relative to the input root, with /
    status: str  # no_face | multiple_faces | unreadable | failed
    faces: int
    written: bool
    detail: str


@dataclass
class AlignSettings:
    size: int = 224
    padding: float = 0.1
    multiple: str = "largest"
    no_face: str = "center"
    quality: int = 95  # JPEG / WebP quality

    def check(self) -> None:
        if self.size < 8:
            raise UserError(f"size={self.size}: expected the output side in pixels, >= 8")
        if not -0.5 < self.padding < 2.0:
            raise UserError(f"padding={self.padding}: expected a value in (-0.5, 2)")
        if self.multiple not in MULTIPLE_POLICIES:
            raise UserError(f"multiple={self.multiple}: expected one of {', '.join(MULTIPLE_POLICIES)}")
        if self.no_face not in NO_FACE_POLICIES:
            raise UserError(f"no_face={self.no_face}: expected one of {', '.join(NO_FACE_POLICIES)}")
        if not 1 <= self.quality <= 100:
            raise UserError(f"quality={self.quality}: expected 1..100")


# ------------------------------------------------------------------------------------ the tree
def check_roots(input_root: Path, output_root: Path) -> None:
    """The input must be a folder; the output must not be it or lie inside it."""
    if not input_root.exists():
        raise UserError(f"input={input_root}: no such folder; expected the dataset root to align")
    if not input_root.is_dir():
        raise UserError(f"input={input_root}: not a folder; expected the dataset root to align")
    src, dst = input_root.resolve(), output_root.resolve()
    if dst == src or src in dst.parents:
        raise UserError(f"output={output_root}: inside the input root {input_root}; "
                        f"expected a new folder outside it (the source tree is never written to)")
    if dst.exists() and not dst.is_dir():
        raise UserError(f"output={output_root}: exists and is not a folder")


def walk_tree(root: Path) -> tuple[list[str], list[str], list[str]]:
    """(images, other files, folders) under ``root`` as sorted relative paths; hidden entries left
    out. Folders are listed so that empty ones (a class with no image yet) are mirrored too."""
    from adadf.data.images import is_image_name

    images: list[str] = []
    others: list[str] = []
    folders: list[str] = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel_folder = Path(folder).relative_to(root)
        folders += [(rel_folder / d).as_posix() for d in dirs]
        for name in files:
            if name.startswith("."):
                continue
            rel = (rel_folder / name).as_posix()
            (images if is_image_name(name) else others).append(rel)
    return sorted(images), sorted(others), sorted(folders)


def copy_file(src: Path, dst: Path) -> bool:
    """Copy a non-image file (atomically) unless ``dst`` is already the same size and not older."""
    try:
        if dst.exists():
            s, d = src.stat(), dst.stat()
            if s.st_size == d.st_size and d.st_mtime >= s.st_mtime:
                return False
        with atomic_path(dst) as tmp:
            shutil.copy2(src, tmp)  # contents and times
    except OSError as err:
        log.warning("%s: cannot copy to %s (%s)", src, dst, err.strerror or err)
        return False
    return True


# ------------------------------------------------------------------------------------ one image
def centre_square(image: Image.Image, size: int) -> Image.Image:
    """The centred square of the whole image, resized: the fallback when no face is found."""
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    return image.resize((size, size), Image.Resampling.BICUBIC, box=(left, top, left + side, top + side),
                        reducing_gap=3.0)


def align_image(src: Path, dst: Path, rel: str, detector, settings: AlignSettings) -> ReportRow | None:
    """Detect, pick, align and write one image; a row for the report unless it went plainly."""
    from adadf.data.images import load_rgb
    from adadf.faces import align_face, pick_face

    try:
        image = load_rgb(src)
    except UserError as err:
        log.warning("%s", err)
        return ReportRow(rel, "unreadable", 0, False, str(err))
    try:
        faces = detector.detect(image)
    except Exception as err:  # one odd image must not end a run of hours: report it, go on
        log.warning("%s: face detection failed (%s: %s)", src, type(err).__name__, err)
        return ReportRow(rel, "failed", 0, False, f"face detection failed: {type(err).__name__}: {err}")
    row = None
    if not faces:
        if settings.no_face == "skip":
            return ReportRow(rel, "no_face", 0, False, "no face found; nothing written (no_face=skip)")
        out = centre_square(image, settings.size)
        row = ReportRow(rel, "no_face", 0, True, "no face found; wrote the centre square (no_face=center)")
    else:
        if len(faces) > 1 and settings.multiple == "skip":
            return ReportRow(rel, "multiple_faces", len(faces), False,
                             f"{len(faces)} faces; nothing written (multiple=skip)")
        face = faces[0] if len(faces) == 1 else pick_face(faces, settings.multiple)
        out = align_face(image, face.landmarks, settings.size, settings.padding)
        if len(faces) > 1:
            row = ReportRow(rel, "multiple_faces", len(faces), True,
                            f"kept the {settings.multiple} face (score {face.score:.3f}, "
                            f"box {', '.join(f'{v:.0f}' for v in face.box)})")
    try:
        save_image(out, dst, settings.quality)
    except (OSError, ValueError) as err:
        log.warning("%s: cannot write (%s)", dst, err)
        return ReportRow(rel, "failed", len(faces), False, f"cannot write {dst}: {err}")
    return row


# ------------------------------------------------------------------------------------ the run
def align_tree(input_root: Path, output_root: Path, detector, settings: AlignSettings, *,
               workers: int = 2, progress: bool = True, report: Path | None = None) -> dict[str, Any]:
    """Align every image of ``input_root`` into ``output_root`` (see the module docstring).

    Returns counts: images, aligned (written now), existing (skipped: done before), and the report
    rows by status.
    """
    settings.check()
    check_roots(input_root, output_root)
    if workers < 1:
        raise UserError(f"workers={workers}: expected an integer >= 1")
    images, others, folders = walk_tree(input_root)
    if not images:
        raise UserError(f"input={input_root}: no image files under this folder")
    output_root.mkdir(parents=True, exist_ok=True)
    for rel in folders:
        (output_root / rel).mkdir(parents=True, exist_ok=True)
    copied = sum(copy_file(input_root / rel, output_root / rel) for rel in others)  # label files first
    todo = [rel for rel in images if not (output_root / rel).exists()]
    log.info("%d images under %s: %d to align, %d already aligned; %d other files copied (%d up to date)",
             len(images), input_root, len(todo), len(images) - len(todo), copied, len(others) - copied)

    def one(rel: str) -> ReportRow | None:
        return align_image(input_root / rel, output_root / rel, rel, detector, settings)

    rows = [row for row in threaded_map(one, todo, workers, desc="align", progress=progress) if row is not None]
    report = report or output_root / REPORT_NAME
    write_report(report, rows, redone=set(todo), still_there=set(images))
    counts = {status: sum(r.status == status for r in rows) for status in ("no_face", "multiple_faces",
                                                                           "unreadable", "failed")}
    written = len(todo) - sum(not r.written for r in rows)
    log.info("aligned %d images (%s) -> %s; report: %s", written,
             ", ".join(f"{n} {s}" for s, n in counts.items() if n) or "each with one face", output_root, report)
    return {"images": len(images), "aligned": written, "existing": len(images) - len(todo),
            "copied": copied, "report": report, **counts}


def write_report(path: Path, rows: Iterable[ReportRow], redone: set[str], still_there: set[str]) -> None:
    """The report for the whole tree: this run's rows, plus an earlier run's rows for images not
    redone now (resume), sorted by path."""
    import pandas as pd

    from adadf.atomic import atomic_open

    frame = pd.DataFrame([asdict(r) for r in rows], columns=list(REPORT_COLUMNS))
    if path.exists():
        try:
            earlier = pd.read_csv(path, dtype={"path": str}, keep_default_na=False)
        except (OSError, ValueError, pd.errors.ParserError) as err:
            log.warning("%s: earlier report unreadable (%s); writing a new one", path, err)
        else:
            if list(earlier.columns) == list(REPORT_COLUMNS):
                keep = earlier[~earlier["path"].isin(redone) & earlier["path"].isin(still_there)]
                keep = keep.assign(written=keep["written"].astype(str) == "True")
                frame = pd.concat([keep, frame], ignore_index=True) if len(frame) else keep
    frame = frame.sort_values("path", kind="stable")
    with atomic_open(path) as f:
        f.write(frame.to_csv(index=False))


def align_command(cfg: DictConfig) -> dict[str, Any]:
    """The composition root of the command: config -> detector + settings -> align_tree."""
    from adadf.faces import build_detector

    if cfg.input is None:
        raise UserError("input: missing; expected input=PATH (the dataset root to align)")
    if cfg.output is None:
        raise UserError("output: missing; expected output=PATH (a new folder for the aligned tree)")
    input_root, output_root = Path(_absolute(cfg.input)), Path(_absolute(cfg.output))
    settings = AlignSettings(size=int(cfg.size), padding=float(cfg.padding), multiple=str(cfg.multiple),
                             no_face=str(cfg.no_face), quality=int(cfg.quality))
    settings.check()
    check_roots(input_root, output_root)  # before the detector loads: a wrong path fails fast
    workers = workers_option(cfg.workers)
    with torch_threads(cfg.get("torch_threads")):
        detector = build_detector(OmegaConf.to_container(cfg.detector, resolve=True))
        return align_tree(input_root, output_root, detector, settings, workers=workers,
                          progress=bool(cfg.progress), report=Path(_absolute(cfg.report)) if cfg.report else None)


def _absolute(path: str) -> str:
    """A user path against the launch directory (align.yaml keeps Hydra from changing directory)."""
    return str(Path(str(path)).expanduser().absolute())


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="align")
@job
def _main(cfg: DictConfig) -> None:
    align_command(cfg)


def main() -> None:
    """``python -m adadf.align`` / ``adadf-align``: user errors are one line on stderr, exit 1."""
    from adadf.cli import launch

    launch(_main)


if __name__ == "__main__":
    main()
