"""User-facing errors: one line, no traceback, non-zero exit."""
from __future__ import annotations

from hydra.errors import CompactHydraException


class UserError(CompactHydraException):
    """Bad input from the user (a file, a key, a value).

    Subclassing Hydra's ``CompactHydraException`` makes Hydra print only ``str(err)`` (no
    traceback) and exit non-zero. The message should name the file or config key and what was
    expected, on one line.
    """
