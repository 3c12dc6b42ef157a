"""Where adadf keeps what it derives from data (decoded images, generated data, file listings)."""
from __future__ import annotations

import os
from pathlib import Path

KINDS = ("synthetic", "images", "listings")


def cache_dir(kind: str) -> Path:
    """``$ADADF_CACHE_DIR/<kind>``, else ``$XDG_CACHE_HOME/adadf/<kind>``, else ``~/.cache/adadf/<kind>``.

    One subfolder per kind (:data:`KINDS`), so every cache can be found, sized or deleted on its own.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown cache kind {kind!r}: expected one of {', '.join(KINDS)}")
    if os.environ.get("ADADF_CACHE_DIR"):
        return Path(os.environ["ADADF_CACHE_DIR"]).expanduser() / kind
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "adadf" / kind
    return Path.home() / ".cache" / "adadf" / kind
