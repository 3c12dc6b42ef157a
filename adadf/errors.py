"""User-facing errors: one line, no traceback, non-zero exit."""
from __future__ import annotations

from hydra.errors import CompactHydraException


class UserError(CompactHydraException):
    """Bad input from the user (a file, a key, a value).

    Subclassing Hydra's ``CompactHydraException`` makes Hydra print only ``str(err)`` (no
    traceback) and exit non-zero. The message should name the file or config key and what was
    expected, on one line.
    """


def first_line(err: BaseException, empty: str | None = None, limit: int | None = None) -> str:
    """The first line of ``err``'s message (messages from Pillow, torch or OmegaConf can span many),
    cut to ``limit`` characters; ``empty`` (default: the exception's type name) when it has none."""
    lines = str(err).strip().splitlines()
    text = lines[0] if lines else (type(err).__name__ if empty is None else empty)
    return text if limit is None or len(text) <= limit else text[: limit - 3] + "..."
