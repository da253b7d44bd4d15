"""Typed, read-only view of the ``NOTIFY_*`` settings.

Values are read from ``django.conf.settings`` on every access so that
``override_settings`` keeps working in tests. The ``parse_*`` helpers are shared
by ``project/settings.py`` (environment strings) and ``notify/checks.py``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from django.conf import settings

DEFAULTS: dict[str, Any] = {
    "NOTIFY_HEARTBEAT_SECONDS": 15,
    "NOTIFY_RETRY_MS": 3000,
    "NOTIFY_PADDING_BYTES": 2048,
    "NOTIFY_RETENTION_DAYS": 30,
    "NOTIFY_PUBLISH_RATE": "60/m",
    "NOTIFY_QUEUE_SIZE": 256,
    "NOTIFY_REPLAY_BATCH": 200,
    "NOTIFY_RESYNC_SECONDS": 5.0,
    "NOTIFY_SYNC_THREADS": 4,
    "NOTIFY_OPEN_BACKLOG": 2000,
    "NOTIFY_MAX_STREAMS_PER_USER": 20,
    "NOTIFY_PRUNE_SECONDS": 3600,
    "NOTIFY_BROKER": {"BACKEND": "notify.broker.memory.MemoryBroker", "OPTIONS": {}},
    "NOTIFY_METRICS_TOKEN": "",
}

_PERIODS = {"s": 1, "m": 60, "h": 3600}
_RATE = re.compile(r"^\s*(\d+)\s*/\s*([smh])\s*$")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@dataclass(frozen=True)
class Rate:
    count: int
    period: int  # seconds

    def __str__(self) -> str:
        unit = {v: k for k, v in _PERIODS.items()}[self.period]
        return f"{self.count}/{unit}"


def parse_rate(value: object) -> Rate:
    if isinstance(value, Rate):
        return value
    match = _RATE.match(value) if isinstance(value, str) else None
    if match is None or int(match.group(1)) < 1:
        raise ValueError(f"expected N/s, N/m or N/h with N >= 1, got {value!r}")
    return Rate(int(match.group(1)), _PERIODS[match.group(2)])


def parse_int(value: object, *, minimum: int) -> int:
    if isinstance(value, bool):
        raise ValueError(f"expected an integer, got {value!r}")
    try:
        number = int(value) if isinstance(value, (int, str)) else None
    except ValueError:
        number = None
    if number is None:
        raise ValueError(f"expected an integer, got {value!r}")
    if number < minimum:
        raise ValueError(f"must be at least {minimum}, got {number}")
    return number


def parse_seconds(value: object, *, minimum: float) -> float:
    if isinstance(value, bool):
        raise ValueError(f"expected a number of seconds, got {value!r}")
    try:
        number = float(value) if isinstance(value, (int, float, str)) else None
    except ValueError:
        number = None
    if number is None or number != number:  # NaN
        raise ValueError(f"expected a number of seconds, got {value!r}")
    if number < minimum:
        raise ValueError(f"must be at least {minimum:g}, got {number:g}")
    return number


def parse_bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"expected one of 1/0, true/false, yes/no, on/off, got {value!r}")


# Each setting's parser, used by checks.py; the minimums are part of the contract.
PARSERS: dict[str, Any] = {
    "NOTIFY_HEARTBEAT_SECONDS": lambda v: parse_seconds(v, minimum=1),
    "NOTIFY_RETRY_MS": lambda v: parse_int(v, minimum=0),
    "NOTIFY_PADDING_BYTES": lambda v: parse_int(v, minimum=0),
    "NOTIFY_RETENTION_DAYS": lambda v: parse_int(v, minimum=1),
    "NOTIFY_PUBLISH_RATE": parse_rate,
    "NOTIFY_QUEUE_SIZE": lambda v: parse_int(v, minimum=1),
    "NOTIFY_REPLAY_BATCH": lambda v: parse_int(v, minimum=1),
    "NOTIFY_RESYNC_SECONDS": lambda v: parse_seconds(v, minimum=0.1),
    "NOTIFY_SYNC_THREADS": lambda v: parse_int(v, minimum=1),
    "NOTIFY_OPEN_BACKLOG": lambda v: parse_int(v, minimum=1),
    "NOTIFY_MAX_STREAMS_PER_USER": lambda v: parse_int(v, minimum=0),
    "NOTIFY_PRUNE_SECONDS": lambda v: parse_seconds(v, minimum=0),
}


class Conf:
    """Parsed values are kept until a setting changes (``setting_changed``,
    which ``override_settings`` sends): the stream path reads several of them
    per connection."""

    def __init__(self) -> None:
        self._cache: dict[str, Any] = {}

    def _get(self, name: str) -> Any:
        try:
            return self._cache[name]
        except KeyError:
            pass
        value = getattr(settings, name, DEFAULTS[name])
        parser = PARSERS.get(name)
        parsed = parser(value) if parser else value
        self._cache[name] = parsed
        return parsed

    def clear(self, **_: object) -> None:
        self._cache.clear()

    @property
    def heartbeat_seconds(self) -> float:
        return float(self._get("NOTIFY_HEARTBEAT_SECONDS"))

    @property
    def retry_ms(self) -> int:
        return int(self._get("NOTIFY_RETRY_MS"))

    @property
    def padding_bytes(self) -> int:
        return int(self._get("NOTIFY_PADDING_BYTES"))

    @property
    def retention_days(self) -> int:
        return int(self._get("NOTIFY_RETENTION_DAYS"))

    @property
    def publish_rate(self) -> Rate:
        rate: Rate = self._get("NOTIFY_PUBLISH_RATE")
        return rate

    @property
    def queue_size(self) -> int:
        return int(self._get("NOTIFY_QUEUE_SIZE"))

    @property
    def replay_batch(self) -> int:
        return int(self._get("NOTIFY_REPLAY_BATCH"))

    @property
    def resync_seconds(self) -> float:
        return float(self._get("NOTIFY_RESYNC_SECONDS"))

    @property
    def sync_threads(self) -> int:
        return int(self._get("NOTIFY_SYNC_THREADS"))

    @property
    def open_backlog(self) -> int:
        return int(self._get("NOTIFY_OPEN_BACKLOG"))

    @property
    def max_streams_per_user(self) -> int:
        """0: no cap."""
        return int(self._get("NOTIFY_MAX_STREAMS_PER_USER"))

    @property
    def prune_seconds(self) -> float:
        """0: no pruning in server processes."""
        return float(self._get("NOTIFY_PRUNE_SECONDS"))

    @property
    def broker(self) -> dict[str, Any]:
        value: dict[str, Any] = self._get("NOTIFY_BROKER")
        return value

    @property
    def metrics_token(self) -> str:
        return str(self._get("NOTIFY_METRICS_TOKEN"))


conf = Conf()
