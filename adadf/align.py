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
- every file is written atomically, so an interrupted run leaves no half image; each report row is
  also appended to a journal beside the report before its image is written, so a run killed with
  ``kill -9`` loses no row: the next run folds the journal into the report and deletes the temp
  files the kill left;
- links to folders are followed; symbolic link loops are skipped with a warning naming them;
- the output root may not be, or lie inside, the input root (nothing is ever written there).

Hydra writes nothing of its own here (no ``outputs/`` dir, no ``.hydra``): the log goes to the
terminal and the only files are those under ``output``.
"""
from __future__ import annotations

import csv
import io
import logging
import os
import shutil
import threading
from collections.abc import Callable, Iterable
from dataclasses import asdict, astuple, dataclass
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from adadf.atomic import atomic_path, save_image, stale_temp_files
from adadf.cli import job, workers_option
from adadf.conf import CONFIG_PATH
from adadf.errors import UserError
from adadf.threads import threaded_map, torch_threads
from adadf.words import counted

log = logging.getLogger(__name__)

REPORT_NAME = "align_report.csv"
REPORT_COLUMNS = ("path", "status", "faces", "written", "detail")
MULTIPLE_POLICIES = ("largest", "confident", "skip")
NO_FACE_POLICIES = ("center", "skip")
ALIGNED = "aligned"  # the journal's status for an image that went plainly (no report row)


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
        from adadf.data.walk import is_link_loop

        problem = "a symbolic link loop" if is_link_loop(input_root) else "no such folder"
        raise UserError(f"input={input_root}: {problem}; expected the dataset root to align")
    if not input_root.is_dir():
        raise UserError(f"input={input_root}: not a folder; expected the dataset root to align")
    src, dst = input_root.resolve(), output_root.resolve()
    if dst == src or src in dst.parents:
        raise UserError(f"output={output_root}: inside the input root {input_root}; "
                        f"expected a new folder outside it (the source tree is never written to)")
    if dst.exists() and not dst.is_dir():
        raise UserError(f"output={output_root}: exists and is not a folder")


def walk_tree(root: Path, avoid: Path | None = None) -> tuple[list[str], list[str], list[str]]:
    """(images, other files, folders) under ``root`` as sorted relative paths; hidden entries and
    symbolic link loops (warned about) left out, ``avoid`` (the output) never entered. Folders are
    listed so that empty ones (a class with no image yet) are mirrored too."""
    from adadf.data.images import is_image_name
    from adadf.data.walk import list_tree

    files, folders = list_tree(root, hidden=False, avoid=avoid)
    images = [rel for rel in files if is_image_name(rel.rpartition("/")[2])]
    others = [rel for rel in files if not is_image_name(rel.rpartition("/")[2])]
    return images, others, folders


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


def aligned_crop(src: Path, rel: str, detector, settings: AlignSettings) -> tuple[Image.Image | None, ReportRow | None]:
    """(the crop to write or None, the report row or None when the image went plainly)."""
    from adadf.data.images import load_rgb
    from adadf.faces import align_face, pick_face

    try:
        image = load_rgb(src)
    except UserError as err:
        log.warning("%s", err)
        return None, ReportRow(rel, "unreadable", 0, False, str(err))
    try:
        faces = detector.detect(image)
    except Exception as err:  # one odd image must not end a run of hours: report it, go on
        log.warning("%s: face detection failed (%s: %s)", src, type(err).__name__, err)
        return None, ReportRow(rel, "failed", 0, False, f"face detection failed: {type(err).__name__}: {err}")
    if not faces:
        if settings.no_face == "skip":
            return None, ReportRow(rel, "no_face", 0, False, "no face found; nothing written (no_face=skip)")
        return centre_square(image, settings.size), ReportRow(
            rel, "no_face", 0, True, "no face found; wrote the centre square (no_face=center)")
    if len(faces) > 1 and settings.multiple == "skip":
        return None, ReportRow(rel, "multiple_faces", len(faces), False,
                               f"{len(faces)} faces; nothing written (multiple=skip)")
    face = faces[0] if len(faces) == 1 else pick_face(faces, settings.multiple)
    out = align_face(image, face.landmarks, settings.size, settings.padding)
    if len(faces) == 1:
        return out, None
    return out, ReportRow(rel, "multiple_faces", len(faces), True,
                          f"kept the {settings.multiple} face (score {face.score:.3f}, "
                          f"box {', '.join(f'{v:.0f}' for v in face.box)})")


def align_image(src: Path, dst: Path, rel: str, detector, settings: AlignSettings,
                record: Callable[[ReportRow], None] = lambda row: None) -> ReportRow | None:
    """Detect, pick, align and write one image; a row for the report unless it went plainly.

    ``record`` (the journal) gets the row, or an ``aligned`` one, before the image is written: a
    kill in between leaves a row without its image (redone by the next run), never an image
    without its row.
    """
    out, row = aligned_crop(src, rel, detector, settings)
    record(row or ReportRow(rel, ALIGNED, 1, True, ""))
    if out is None:
        return row
    try:
        save_image(out, dst, settings.quality)
    except (OSError, ValueError) as err:
        log.warning("%s: cannot write (%s)", dst, err)
        row = ReportRow(rel, "failed", row.faces if row else 1, False, f"cannot write {dst}: {err}")
        record(row)
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
    images, others, folders = walk_tree(input_root, avoid=output_root)
    if not images:
        raise UserError(f"input={input_root}: no image files under this folder")
    output_root.mkdir(parents=True, exist_ok=True)
    for rel in folders:
        (output_root / rel).mkdir(parents=True, exist_ok=True)
    report = report or output_root / REPORT_NAME
    remove_stale_temps([output_root, *(output_root / rel for rel in folders)], report)
    recover_journal(report, still_there=set(images))
    copied = sum(copy_file(input_root / rel, output_root / rel) for rel in others)  # label files first
    todo = [rel for rel in images if not (output_root / rel).exists()]
    log.info("%s under %s: %d to align, %d already aligned; %s copied (%d up to date)",
             counted(len(images), "image"), input_root, len(todo), len(images) - len(todo),
             counted(copied, "other file"), len(others) - copied)

    with ReportJournal(journal_path(report)) as journal:
        def one(rel: str) -> ReportRow | None:
            return align_image(input_root / rel, output_root / rel, rel, detector, settings, journal.append)

        rows = [row for row in threaded_map(one, todo, workers, desc="align", progress=progress) if row is not None]
        write_report(report, rows, redone=set(todo), still_there=set(images))
    journal_path(report).unlink(missing_ok=True)  # the report now holds every row
    counts = {status: sum(r.status == status for r in rows) for status in ("no_face", "multiple_faces",
                                                                           "unreadable", "failed")}
    written = len(todo) - sum(not r.written for r in rows)
    log.info("aligned %s (%s) -> %s; report: %s", counted(written, "image"),
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


# ------------------------------------------------------------------------------------ after kill -9
def remove_stale_temps(folders: Iterable[Path], report: Path) -> None:
    """Delete the temp files of atomic writes that a killed run (``kill -9``: no cleanup runs) left
    in the output folders and beside the report; nothing else writes there while align runs."""
    stale = {p for folder in folders for p in stale_temp_files(folder)}
    stale |= {p for p in stale_temp_files(report.parent) if p.name.startswith(f".{report.name}.")}
    for path in sorted(stale):
        path.unlink(missing_ok=True)
    if stale:
        log.info("removed %s an interrupted run left (e.g. %s)", counted(len(stale), "temp file"), min(stale))


def journal_path(report: Path) -> Path:
    """The journal beside the report (hidden: not part of the aligned tree)."""
    return report.with_name(f".{report.name}.journal")


class ReportJournal:
    """Report rows appended one line each while the run goes: what a killed run leaves for the next.

    One ``os.write`` per row on an append-only file, so a kill leaves whole lines (or, at worst,
    cuts the last one, which :func:`read_journal` drops). Worker threads share it.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = -1
        self._lock = threading.Lock()

    def __enter__(self) -> ReportJournal:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self._fd)

    def append(self, row: ReportRow) -> None:
        line = io.StringIO()
        csv.writer(line).writerow(astuple(row))
        with self._lock:
            os.write(self._fd, line.getvalue().encode())


def read_journal(path: Path) -> list[ReportRow]:
    """A journal's rows, the last one per path (a failed write follows its first row)."""
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = list(csv.reader(io.StringIO(text)))
    if lines and not text.endswith("\n"):
        lines.pop()  # cut by the kill
    latest = {}
    for fields in lines:
        if len(fields) == len(REPORT_COLUMNS) and fields[2].isdigit():
            latest[fields[0]] = ReportRow(fields[0], fields[1], int(fields[2]), fields[3] == "True", fields[4])
    return list(latest.values())


def recover_journal(report: Path, still_there: set[str]) -> None:
    """Fold the journal of a killed run into the report, then delete it."""
    journal = journal_path(report)
    if not journal.exists():
        return
    rows = read_journal(journal)
    write_report(report, [r for r in rows if r.status != ALIGNED], redone={r.path for r in rows},
                 still_there=still_there)
    journal.unlink()
    log.info("%s: %d rows of an interrupted run folded into the report", report, len(rows))


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


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="align")
@job
def _main(cfg: DictConfig) -> None:
    align_command(cfg)


def main() -> None:
    """``python -m adadf.align`` / ``adadf-align``: user errors are one line on stderr, exit 1."""
    from adadf.cli import launch

    launch(_main)


if __name__ == "__main__":
    main()
