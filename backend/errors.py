"""The errors a user can cause, and the checks that raise them.

Every request argument that reaches the backend passes through one of the checks below before it is
used, so a bad value gives one line that says what was wrong and what to send instead, never a
traceback, an OverflowError from a JSON ``Infinity``, or a value silently rounded or clamped.
Request text is only ever compared against the workspace's own lists (``choice``, ``names``); it
never becomes a file path.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Integral, Real
from typing import Any

MAX_LIST = 1_000  # entries in any list argument


class BackendError(ValueError):
    """A request the backend cannot serve; the message says what to change."""


def whole(name: str, value: Any, lo: int, hi: int) -> int:
    """``value`` as an int in [lo, hi]: ints, integral floats (the UI's number boxes) and digit strings.
    1.7, NaN, Infinity, True and out-of-range values are errors, not rounded or clamped."""
    v: Any = value
    if isinstance(v, str):
        try:
            v = float(v.strip()) if v.strip() else None
        except ValueError:
            v = None
    if isinstance(v, bool) or not isinstance(v, Real) or (isinstance(v, float) and not v.is_integer()):
        raise BackendError(f"{name} must be a whole number between {lo:,} and {hi:,}, got {shown(value)}")
    if not isinstance(v, Integral) and not math.isfinite(v):
        raise BackendError(f"{name} must be a whole number between {lo:,} and {hi:,}, got {shown(value)}")
    if not lo <= v <= hi:
        raise BackendError(f"{name} must be between {lo:,} and {hi:,}, got {shown(value)}")
    return int(v)


def number(name: str, value: Any, lo: float, hi: float) -> float:
    """``value`` as a finite float in [lo, hi]; NaN, Infinity, strings that are not numbers are errors."""
    v: Any = value
    if isinstance(v, str):
        try:
            v = float(v)
        except ValueError:
            v = None
    if isinstance(v, bool) or not isinstance(v, Real) or not math.isfinite(float(v)) or not lo <= float(v) <= hi:
        raise BackendError(f"{name} must be a number between {lo:g} and {hi:g}, got {shown(value)}")
    return float(v)


def flag(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if value in (0, 1):
        return bool(value)
    raise BackendError(f"{name} must be true or false, got {shown(value)}")


def text(name: str, value: Any, max_chars: int, *, allow_empty: bool = True) -> str:
    """A string of at most ``max_chars`` characters (None counts as empty)."""
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise BackendError(f"{name} must be a string, got {shown(value)}")
    if len(value) > max_chars:
        raise BackendError(f"{name} has {len(value):,} characters; the limit is {max_chars:,}")
    if not allow_empty and not value.strip():
        raise BackendError(f"{name} is empty")
    return value


def choice(name: str, value: Any, allowed: Sequence[str]) -> str:
    """One of ``allowed`` (compared as strings; nothing else is done with the request's text)."""
    if isinstance(value, str) and value in allowed:
        return value
    raise BackendError(f"unknown {name} {shown(value)}; this workspace has: {', '.join(allowed) or 'none'}")


def names(name: str, value: Any, allowed: Sequence[str], *, at_least: int = 1) -> list[str]:
    """A list of names from ``allowed``, duplicates dropped (order kept): at most ``len(allowed)`` long."""
    value = [] if value is None else value
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise BackendError(f"{name} must be a list of names such as {list(allowed[:2])}, got {shown(value)}")
    if len(value) > MAX_LIST:
        raise BackendError(f"{name} has {len(value):,} entries; the limit is {MAX_LIST:,}")
    out: list[str] = []
    for v in value:
        if v in (None, ""):
            continue
        c = choice(name[:-1] if name.endswith("s") else name, v, allowed)
        if c not in out:
            out.append(c)
    if len(out) < at_least:
        raise BackendError(f"pick at least {at_least} {name}" if at_least > 1 else f"{name} is empty")
    return out


def shown(value: Any, limit: int = 60) -> str:
    """A short, printable rendering of a request value for an error line."""
    r = repr(value)
    return r if len(r) <= limit else r[: limit - 3] + "..."
