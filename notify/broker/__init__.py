"""``get_broker()``: the configured backend, one instance per event loop.

Loop-bound objects (queues, locks, Redis connections) are created lazily on the
loop that uses them and never at import time. The cache is dropped when
``NOTIFY_BROKER`` changes (tests use ``override_settings``).
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from notify.broker.base import Broker, History, Message, Subscription
from notify.conf import conf

__all__ = [
    "Broker",
    "History",
    "Message",
    "Subscription",
    "get_broker",
    "has_broker",
    "is_serving",
    "serving_loop",
    "serving",
    "make_broker",
    "reset_brokers",
]

DEFAULT_HISTORY = "notify.history.DatabaseHistory"

_brokers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Broker] = (
    weakref.WeakKeyDictionary()
)
_server_loops: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()


def serving() -> None:
    """Mark the running loop as a server's: it lives as long as the process,
    so publishing from it keeps one broker (and its Redis connections) rather
    than one per call, as a shell or a worker's short-lived loop does."""
    _server_loops.add(asyncio.get_running_loop())


def is_serving() -> bool:
    return asyncio.get_running_loop() in _server_loops


def serving_loop() -> asyncio.AbstractEventLoop | None:
    """This process's server loop, if it has one that is running."""
    for loop in list(_server_loops):
        if loop.is_running():
            return loop
    return None


def make_broker(config: dict[str, Any] | None = None) -> Broker:
    """Build a backend from a ``NOTIFY_BROKER``-shaped dict."""
    config = conf.broker if config is None else config
    try:
        backend = import_string(config["BACKEND"])
    except (KeyError, ImportError) as exc:
        raise ImproperlyConfigured(
            f"NOTIFY_BROKER: cannot load BACKEND ({exc})"
        ) from exc
    options = dict(config.get("OPTIONS", {}))
    history_path = config.get("HISTORY", DEFAULT_HISTORY)
    history = import_string(history_path)() if history_path else None
    try:
        broker: Broker = backend(
            history=history,
            queue_size=conf.queue_size,
            resync_seconds=conf.resync_seconds,
            **options,
        )
    except (TypeError, ValueError) as exc:
        raise ImproperlyConfigured(f"NOTIFY_BROKER: bad OPTIONS ({exc})") from exc
    return broker


def get_broker() -> Broker:
    """The broker of the running event loop, created on first use."""
    loop = asyncio.get_running_loop()
    broker = _brokers.get(loop)
    if broker is None:
        broker = _brokers[loop] = make_broker()
    return broker


def has_broker() -> bool:
    return asyncio.get_running_loop() in _brokers


def forget_broker() -> Broker | None:
    """Detach the running loop's broker (the caller closes it)."""
    return _brokers.pop(asyncio.get_running_loop(), None)


def reset_brokers(**_: object) -> None:
    _brokers.clear()
