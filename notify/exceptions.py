"""Errors raised by notify's public functions.

::

    NotifyError
    ├── ValidationError         bad input; ``errors`` maps each field to messages
    ├── RateLimitedError        too many publishes; ``retry_after`` in seconds
    └── BrokerUnavailableError  the broker cannot take a message now (raised
                                by ``Broker.publish``, whatever the backend)
"""

from __future__ import annotations


class NotifyError(Exception):
    """Base class of every notify error."""


class ValidationError(NotifyError, ValueError):
    def __init__(self, errors: dict[str, list[str]]) -> None:
        self.errors = errors
        detail = "; ".join(f"{k}: {' '.join(v)}" for k, v in errors.items())
        super().__init__(detail)


class RateLimitedError(NotifyError):
    def __init__(self, retry_after: int) -> None:
        self.retry_after = retry_after
        super().__init__(f"too many notifications; retry in {retry_after}s")


class BrokerUnavailableError(NotifyError):
    """The backend (Redis) is unreachable or too slow; the message was not
    handed over. Committed notifications still reach every stream through
    the servers' resync from the database."""
