"""What every command-line entry point shares: schemas registered before Hydra composes, and user
errors (bad key, bad value, bad file) printed as one line with a non-zero exit and no traceback.

Hydra prints composition errors over several lines and adds "Set the environment variable
HYDRA_FULL_ERROR=1 ..." to every error. ``launch`` lets Hydra raise instead (the same switch) and
prints one line itself; bugs keep their full traceback, and ``HYDRA_FULL_ERROR=1`` still shows one
for everything.
"""
from __future__ import annotations

import dataclasses
import errno
import functools
import os
import re
import sys
from typing import Any, Callable, TypeVar

from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf.errors import OmegaConfBaseException

from adadf.config import register_schemas
from adadf.config.schema import field_names
from adadf.errors import UserError, first_line

T = TypeVar("T")


def _config_error(err: BaseException) -> str:
    """One line for a Hydra/OmegaConf composition error (the override and what was expected)."""
    cause = err.__cause__ if isinstance(err.__cause__, OmegaConfBaseException) else err
    key = getattr(cause, "full_key", None)
    schema = getattr(cause, "object_type", None)
    reason = first_line(cause)
    override = re.search(r"override (\S+)", first_line(err))
    if key and " not in " in reason:
        return _unknown_key(key, schema, getattr(cause, "parent_node", None))
    if key:
        where = override.group(1) if override else key
        return f"{where}: {reason}"
    text = str(err).split("Config search path")[0]  # Hydra appends its search path: not the user's concern
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    head, options = lines[0], [line for line in lines[1:] if not line.endswith(":")]
    if "Available options" in str(err):
        return f"{head} (available: {', '.join(options)})"
    return "; ".join(lines)


def _unknown_key(key: str, schema: Any, parent: Any) -> str:
    """``key: unknown key (expected one of ...)``, the same line for every command. A key of a group
    with a schema is a typo; elsewhere (a plain node such as adadf-eval's dataset overrides) a key
    that is not there yet may be added on purpose: the line says how (a leading ``+``)."""
    if schema is not None and dataclasses.is_dataclass(schema):
        return f"{key}: unknown key (expected one of {', '.join(field_names(schema))})"
    names = [str(k) for k in (parent.keys() if hasattr(parent, "keys") else []) if k != "hydra"]
    expected = f"expected one of {', '.join(names)}; " if names else ""
    return f"{key}: unknown key ({expected}to add a new key, use a leading +: +{key}=...)"


# A file the user's machine will not let us write (or read): the user's to fix, not a bug.
_STORAGE_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT}


def one_line(err: BaseException) -> str | None:
    """The line to print for a user error, or None for a bug (which keeps its traceback)."""
    if isinstance(err, UserError):
        return str(err)
    if isinstance(err, OSError) and err.errno in _STORAGE_ERRNOS and err.filename:
        return f"{err.filename}: {err.strerror} (check the output location, e.g. hydra.run.dir)"
    if isinstance(err, (HydraException, OmegaConfBaseException)):
        return _config_error(err)
    return None


def workers_option(value: Any, key: str = "workers") -> int:
    """A command's ``workers=auto|N`` (auto: one per CPU core)."""
    if str(value) == "auto":
        return os.cpu_count() or 1
    try:
        workers = int(value)
    except (TypeError, ValueError):
        workers = 0
    if workers < 1:
        raise UserError(f"{key}={value}: expected auto or an integer >= 1")
    return workers


def launch(main: Callable[[], Any]) -> None:
    """Run a ``@hydra.main`` function as a command."""
    register_schemas()
    wants_traceback = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises; this function reports
    try:
        main()
    except Exception as err:  # noqa: BLE001 - sorted into user errors and bugs below
        line = None if wants_traceback else one_line(err)
        if line is None:
            raise
        sys.stderr.write(line + "\n")
        sys.exit(1)


def in_multirun() -> bool:
    """Whether this Hydra job is one of a multirun (``-m``)."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def job(task: Callable[[Any], T]) -> Callable[[Any], T]:
    """Decorate a Hydra task function: outside a multirun, a user error ends the command with its
    one line (without Hydra's "Error executing job with overrides" preamble)."""

    @functools.wraps(task)
    def wrapper(cfg: Any) -> T:
        try:
            return task(cfg)
        except UserError as err:
            if in_multirun():
                raise
            sys.stderr.write(f"{err}\n")
            raise SystemExit(1) from None

    return wrapper
