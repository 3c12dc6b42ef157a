"""Schema fields that carry their own range: one default and one check, next to each other.

    threshold: float = ranged(0.7, lambda x: 0 < x < 1, "a value in (0, 1)")

``check_ranges`` walks a typed config (a dataclass instance, nested ones included) and turns the
first value outside its range into one line: ``fusion.threshold=1.5: expected a value in (0, 1)``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

from adadf.errors import UserError

Check = Callable[[Any], bool]


def ranged(default: Any, check: Check, expected: str, **kwargs: Any) -> Any:
    """A dataclass field with ``default`` whose values must satisfy ``check`` (``expected`` says how)."""
    return dataclasses.field(default=default, metadata={"check": check, "expected": expected}, **kwargs)


# The ranges used by more than one schema.
def open01() -> tuple[Check, str]:
    return (lambda x: 0.0 < x < 1.0), "a value in (0, 1)"


def closed01() -> tuple[Check, str]:
    return (lambda x: 0.0 <= x <= 1.0), "a value in [0, 1]"


def half_open01() -> tuple[Check, str]:
    return (lambda x: 0.0 <= x < 1.0), "a value in [0, 1)"


def at_least(low: int | float) -> tuple[Check, str]:
    kind = "an integer" if isinstance(low, int) else "a value"
    return (lambda x: x >= low), f"{kind} >= {low}"


def positive() -> tuple[Check, str]:
    return (lambda x: x > 0), "a value > 0"


def one_of(*options: str) -> tuple[Check, str]:
    return (lambda x: x in options), " | ".join(options)


def check_ranges(obj: Any, prefix: str) -> None:
    """Raise a one-line ``UserError`` for the first field of ``obj`` (recursively) out of range."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}.{f.name}" if prefix else f.name
        if dataclasses.is_dataclass(value):
            check_ranges(value, key)
            continue
        check = f.metadata.get("check")
        if check is None or value is None and f.default is None:
            continue
        try:
            ok = bool(check(value))
        except TypeError:
            ok = False
        if not ok:
            raise UserError(f"{key}={value!r}: expected {f.metadata['expected']}")
