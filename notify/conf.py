"""Every ``NOTIFY_*`` setting: its name, default, parser and check id.

A host sets them as ordinary Django settings; any it leaves out has the
default here. Values are read from ``django.conf.settings`` on access (and
kept until a setting changes) so that ``override_settings`` keeps working in
tests. Each parser takes the setting's value or its environment string, so a
project may pass environment strings through unparsed; ``validate()`` (run
when the app is loaded) and the system checks (``notify/checks.py``) both use
``SETTINGS``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

_PERIODS = {"s": 1, "m": 60, "h": 3600}
_RATE = re.compile(r"^\s*(\d+)\s*/\s*([smh])\s*$")


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


def parse_text(value: object, *, empty: bool = True) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    if not empty and not value.strip():
        raise ValueError("must not be empty")
    return value


def parse_redis_url(value: object) -> str:
    """Empty: no Redis (the in-process broker)."""
    url = parse_text(value).strip()
    if url and not url.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(f"expected a redis://, rediss:// or unix:// URL, got {url!r}")
    return url


@dataclass(frozen=True)
class Setting:
    name: str
    default: Any
    parse: Callable[[Any], Any]
    check_id: str


# The minimums are part of the contract. NOTIFY_BROKER (notify.E010) is
# checked by building it (checks.py); its default follows NOTIFY_REDIS_URL.
SETTINGS: tuple[Setting, ...] = (
    Setting(
        "NOTIFY_HEARTBEAT_SECONDS",
        15.0,
        lambda v: parse_seconds(v, minimum=1),
        "notify.E001",
    ),
    Setting("NOTIFY_RETRY_MS", 3000, lambda v: parse_int(v, minimum=0), "notify.E002"),
    Setting(
        "NOTIFY_PADDING_BYTES", 2048, lambda v: parse_int(v, minimum=0), "notify.E003"
    ),
    Setting(
        "NOTIFY_RETENTION_DAYS", 30, lambda v: parse_int(v, minimum=1), "notify.E004"
    ),
    Setting("NOTIFY_PUBLISH_RATE", "60/m", parse_rate, "notify.E005"),
    Setting("NOTIFY_QUEUE_SIZE", 256, lambda v: parse_int(v, minimum=1), "notify.E006"),
    Setting(
        "NOTIFY_REPLAY_BATCH", 200, lambda v: parse_int(v, minimum=1), "notify.E007"
    ),
    Setting(
        "NOTIFY_RESYNC_SECONDS",
        5.0,
        lambda v: parse_seconds(v, minimum=0.1),
        "notify.E008",
    ),
    Setting("NOTIFY_SYNC_THREADS", 4, lambda v: parse_int(v, minimum=1), "notify.E009"),
    Setting(
        "NOTIFY_OPEN_BACKLOG", 2000, lambda v: parse_int(v, minimum=1), "notify.E011"
    ),
    Setting(
        "NOTIFY_MAX_STREAMS_PER_USER",
        20,
        lambda v: parse_int(v, minimum=0),
        "notify.E012",
    ),
    Setting(
        "NOTIFY_PRUNE_SECONDS",
        3600.0,
        lambda v: parse_seconds(v, minimum=0),
        "notify.E013",
    ),
    Setting("NOTIFY_REDIS_URL", "", parse_redis_url, "notify.E014"),
    Setting(
        "NOTIFY_REDIS_PREFIX",
        "notify:",
        lambda v: parse_text(v, empty=False),
        "notify.E015",
    ),
    Setting("NOTIFY_METRICS_TOKEN", "", parse_text, "notify.E016"),
    # The template notify's pages extend; checks.py also checks that it exists.
    Setting(
        "NOTIFY_BASE_TEMPLATE",
        "notify/base.html",
        lambda v: parse_text(v, empty=False),
        "notify.E017",
    ),
    Setting("NOTIFY_DRAIN_RATE", 200, lambda v: parse_int(v, minimum=0), "notify.E019"),
)
BY_NAME = {setting.name: setting for setting in SETTINGS}


def validate() -> None:
    """Raise ``ImproperlyConfigured`` naming the first bad ``NOTIFY_*`` setting."""
    for setting in SETTINGS:
        value = getattr(settings, setting.name, setting.default)
        try:
            setting.parse(value)
        except ValueError as exc:
            raise ImproperlyConfigured(f"{setting.name}: {exc}") from exc


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
        setting = BY_NAME[name]
        parsed = setting.parse(getattr(settings, name, setting.default))
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
    def redis_url(self) -> str:
        """Empty: no Redis."""
        return str(self._get("NOTIFY_REDIS_URL"))

    @property
    def redis_prefix(self) -> str:
        return str(self._get("NOTIFY_REDIS_PREFIX"))

    @property
    def broker(self) -> Any:
        """``NOTIFY_BROKER`` if set (validated when the broker is built),
        else Redis at ``NOTIFY_REDIS_URL``, else the in-process broker."""
        config = getattr(settings, "NOTIFY_BROKER", None)
        if config is not None:
            return config
        if self.redis_url:
            return {
                "BACKEND": "notify.broker.redis.RedisBroker",
                "OPTIONS": {"url": self.redis_url, "prefix": self.redis_prefix},
            }
        return {"BACKEND": "notify.broker.memory.MemoryBroker", "OPTIONS": {}}

    @property
    def metrics_token(self) -> str:
        return str(self._get("NOTIFY_METRICS_TOKEN"))

    @property
    def base_template(self) -> str:
        return str(self._get("NOTIFY_BASE_TEMPLATE"))

    @property
    def drain_rate(self) -> int:
        """Streams a stopping process ends per second; 0: none, the server
        cancels them all when its grace period ends."""
        return int(self._get("NOTIFY_DRAIN_RATE"))


conf = Conf()
