"""Errors raised by notify's public functions.

::

    NotifyError
    ├── ValidationError      bad input; ``errors`` maps each field to messages
    ├── PublishDeniedError   the sender may not publish
    └── RateLimitedError     too many publishes; ``retry_after`` in seconds
"""

from __future__ import annotations


class NotifyError(Exception):
    """Base class of every notify error."""


class ValidationError(NotifyError, ValueError):
    def __init__(self, errors: dict[str, list[str]]) -> None:
        self.errors = errors
        detail = "; ".join(f"{k}: {' '.join(v)}" for k, v in errors.items())
        super().__init__(detail)


class PublishDeniedError(NotifyError):
    pass


class RateLimitedError(NotifyError):
    def __init__(self, retry_after: int) -> None:
        self.retry_after = retry_after
        super().__init__(f"too many notifications; retry in {retry_after}s")
