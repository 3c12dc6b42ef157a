"""Video frames in and out, through PyAV (FFmpeg's libraries, bundled in its wheel).

PyAV rather than imageio-ffmpeg or OpenCV: its wheel installs cleanly here beside torch (no pins
on torch, numpy or Pillow), it decodes and encodes in-process (no ffmpeg subprocess to find or
kill), hands frames over as PIL images, and its errors are Python exceptions we can turn into
one line naming the file.
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from PIL import Image

from adadf.atomic import atomic_path
from adadf.errors import UserError, first_line

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv"})
DEFAULT_FPS = Fraction(25)


class UnreadableVideo(UserError):
    """A video file that cannot be opened or decoded."""


def is_video_name(name: str) -> bool:
    return not name.startswith(".") and Path(name).suffix.lower() in VIDEO_SUFFIXES


def _av():
    try:
        import av
    except ImportError:
        raise UserError("video input needs the PyAV package (pip install av; it is an adadf dependency)") from None
    return av


@dataclass
class VideoInfo:
    frames: int | None  # as the container says (may be 0/None when unknown)
    fps: Fraction
    width: int
    height: int


@dataclass
class FrameCount:
    """What one :func:`read_frames` pass decoded against what the container declares: a cut file
    (a download that broke off) still opens, declares all its frames and then simply ends."""

    declared: int | None = None  # None: the container does not say
    read: int = 0  # frames decoded, also those not yielded (``every``)
    incomplete: str | None = None  # the warning, when fewer frames than declared were read

    def finish(self, path: str | Path, error: str | None = None) -> None:
        """Warn (once, naming the file and both counts) when the pass ended early."""
        short = self.declared is not None and self.read < self.declared
        if not short and error is None:
            return
        of = f"of the {self.declared} frames the container declares" if self.declared else \
            "frames (the container declares no count)"
        why = f"decoding stopped: {error}" if error else "the file ends early (truncated?)"
        self.incomplete = f"{path}: read {self.read} {of}; {why}"
        log.warning("%s", self.incomplete)


@dataclass
class Frame:
    index: int  # decoded frame number, from 0
    time_s: float  # presentation time
    image: Image.Image  # RGB


def probe(path: str | Path) -> VideoInfo:
    """Frame count, rate and size of the first video stream; UnreadableVideo when there is none."""
    av = _av()
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise UnreadableVideo(f"{path}: no video stream in this file")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or DEFAULT_FPS
            return VideoInfo(frames=stream.frames or None, fps=Fraction(rate), width=stream.width,
                             height=stream.height)
    except av.error.FFmpegError as err:
        raise UnreadableVideo(f"{path}: cannot decode video ({first_line(err)})") from None


def read_frames(path: str | Path, every: int = 1, keep: Callable[[int], bool] | None = None,
                count: FrameCount | None = None) -> Iterator[Frame]:
    """Decoded frames of the first video stream: frame ``i`` when ``i % every == 0`` or ``keep(i)``.

    A file that yields no frame at all raises UnreadableVideo; one that breaks off later (a
    truncated download) ends with a warning after the frames that decoded, saying how many were
    read of how many the container declares; ``count`` (filled in) keeps both for the caller.
    """
    if every < 1:
        raise UserError(f"every={every}: expected an integer >= 1")
    av = _av()
    try:
        container = av.open(str(path))
    except av.error.FFmpegError as err:
        raise UnreadableVideo(f"{path}: cannot decode video ({first_line(err)})") from None
    with container:
        if not container.streams.video:
            raise UnreadableVideo(f"{path}: no video stream in this file")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        count = count if count is not None else FrameCount()
        count.declared, count.read = stream.frames or None, 0
        error = None
        try:
            for decoded in container.decode(stream):
                index, count.read = count.read, count.read + 1
                if index % every == 0 or (keep is not None and keep(index)):
                    time_s = float(decoded.time) if decoded.time is not None else 0.0
                    yield Frame(index, time_s, decoded.to_image())
        except av.error.FFmpegError as err:
            if not count.read:
                raise UnreadableVideo(f"{path}: cannot decode video ({first_line(err)})") from None
            error = first_line(err)
        if not count.read:
            raise UnreadableVideo(f"{path}: cannot decode video (no frames)")
        count.finish(path, error)


@contextlib.contextmanager
def video_writer(path: str | Path, fps: Fraction | float = DEFAULT_FPS) -> Iterator[Callable[[Image.Image], None]]:
    """``write(image)`` for each frame into an H.264 MP4 at ``path``, atomically: the file appears
    whole when the block ends, and not at all if it raises. Odd sides are cropped by one pixel
    (H.264's 4:2:0 colour needs even sides)."""
    av = _av()
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with atomic_path(Path(path)) as tmp:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = None

            def write(image: Image.Image) -> None:
                nonlocal stream
                if stream is None:
                    stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
                    stream.width, stream.height = image.width // 2 * 2, image.height // 2 * 2
                    stream.pix_fmt = "yuv420p"
                if (image.width, image.height) != (stream.width, stream.height):
                    image = image.crop((0, 0, stream.width, stream.height))
                for packet in stream.encode(av.VideoFrame.from_image(image if image.mode == "RGB" else image.convert("RGB"))):
                    container.mux(packet)

            yield write
            if stream is not None:
                for packet in stream.encode():  # flush the encoder
                    container.mux(packet)
