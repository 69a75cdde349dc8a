"""One coercer for every settings dataclass (policy, queue, index, service).

Settings arrive as JSON values (a policy file, an index's ``meta.json``) or as text (URL query parameters,
environment variables, CLI options). :func:`coerce` turns them into the types of the dataclass's defaults (text
is parsed only when the source is text: a JSON policy's ``"5"`` is not a number), and raises the
caller's error class, naming the setting and where it came from, for a misspelled name or a value of the wrong
type: nothing is silently dropped or guessed.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

__all__ = ["check_count", "check_seconds", "coerce"]

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _convert(default: Any, value: Any, text: bool) -> Any:
    """``value`` as the type of ``default``; ValueError when it is not one."""
    is_num = isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(value, str) and not text and not isinstance(default, str) and default is not None:
        raise ValueError(value)
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            return int(value)
    elif isinstance(default, float):
        if is_num or isinstance(value, str):
            out = float(value)
            if math.isfinite(out):
                return out
    elif isinstance(default, timedelta):
        if isinstance(value, timedelta):
            return value
        if is_num or isinstance(value, str):
            seconds = float(value)
            if math.isfinite(seconds):
                return timedelta(seconds=seconds)
    elif isinstance(default, (frozenset, tuple)):
        items = value.split(",") if isinstance(value, str) else value
        if isinstance(items, (list, tuple, set, frozenset)):
            if isinstance(default, tuple):
                kinds = {type(x) for x in default}
                kind = kinds.pop() if len(kinds) == 1 else None
                return tuple(_convert(kind(), x, text) if kind is not None and kind is not str else x for x in items)
            return frozenset(x.strip() if isinstance(x, str) else x for x in items)
    elif isinstance(value, str):  # str, or str | None
        return value
    raise ValueError(value)


def coerce(cls: type, values: Mapping[str, Any], source: str, error: type[Exception], *,
           text: bool = False) -> dict[str, Any]:
    """Keyword arguments for ``cls(**...)`` from ``values``, each converted to the type of its default;
    ``text=True`` when the values are strings to parse (URL, environment)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    out: dict[str, Any] = {}
    for key, value in values.items():
        f = fields.get(key)
        if f is None:
            raise error(f"unknown setting {key!r} in {source}; known: {sorted(fields)}")
        default = _default(f)
        try:
            out[key] = _convert(default, value, text)
        except (TypeError, ValueError, OverflowError):
            want = type(default).__name__ if default is not None else "str"
            raise error(f"setting {key}={value!r} in {source} is not a valid {want}") from None
    return out


def from_environment(cls: type, prefix: str, error: type[Exception], environ: Mapping[str, str] | None = None,
                     ) -> dict[str, Any]:
    """Keyword arguments for ``cls(**...)`` from the variables ``<prefix><FIELD>`` of ``environ`` (by default the
    process's), parsed as :func:`coerce` parses text; a misspelled field raises ``error``."""
    env = os.environ if environ is None else environ
    return coerce(cls, {k[len(prefix):].lower(): v for k, v in env.items() if k.startswith(prefix)},
                  "the environment", error, text=True)


def check_count(name: str, value: Any, error: type[Exception], minimum: int = 1) -> None:
    """Raise ``error`` unless ``value`` is an integer (not a bool) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise error(f"{name} must be an integer of at least {minimum}, got {value!r}")


def check_seconds(name: str, value: Any, error: type[Exception]) -> None:
    """Raise ``error`` unless ``value`` is a finite number of seconds, 0 or more (not a bool, not NaN)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise error(f"{name} must be a finite number of seconds, 0 or more, got {value!r}")
