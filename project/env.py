"""Reading the demo's settings from the environment.

A variable that is unset leaves the setting to its default: Django's, notify's
(``notify/conf.py``) or the one given here for the demo's own. A bad value
raises ``ImproperlyConfigured`` naming the variable.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

from django.core.exceptions import ImproperlyConfigured

T = TypeVar("T")
N = TypeVar("N", int, float)

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env(name: str, parse: Callable[[str], T], default: T) -> T:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        return parse(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name}: {exc}") from exc


def passthrough(namespace: dict[str, Any], names: dict[str, str]) -> None:
    """Set ``namespace[setting] = os.environ[variable]`` for each set variable
    of ``names`` (variable -> setting), as it is: the app that owns the
    setting parses and checks it, and knows its default."""
    for variable, setting in names.items():
        if variable in os.environ:
            namespace[setting] = os.environ[variable]


def boolean(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"expected one of 1/0, true/false, yes/no, on/off, got {value!r}")


def _number(convert: Callable[[str], N], what: str, minimum: N) -> Callable[[str], N]:
    def parse(value: str) -> N:
        try:
            number = convert(value)
        except ValueError:
            raise ValueError(f"expected {what}, got {value!r}") from None
        if number != number or number < minimum:  # NaN too
            raise ValueError(f"must be at least {minimum}, got {value!r}")
        return number

    return parse


def whole(minimum: int) -> Callable[[str], int]:
    return _number(int, "an integer", minimum)


def seconds(minimum: float) -> Callable[[str], float]:
    return _number(float, "a number of seconds", minimum)
