"""Server-Sent Events encoding: values in, exact bytes out, no I/O.

Framing follows the WHATWG HTML spec, "Server-sent events" §9.2.5/§9.2.6: an event
is a block of ``field: value`` lines ended by a blank line, and any of CR, LF or
CRLF ends a line. ``data`` may span lines (each becomes its own ``data:`` line, so
the client rejoins it with LF); ``id`` and ``event`` are single-line fields, so a
line break in them would forge a new field and is rejected. A NUL in ``id`` makes
browsers ignore the id, so that is rejected too.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

_LINE_BREAK = re.compile(r"\r\n|\r|\n")

PING = b": ping\n\n"


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    """One event. ``data`` is sent as is; ``id``/``event`` must be single-line."""

    data: str | None = None
    event: str | None = None
    id: int | str | None = None
    retry: int | None = None

    def __post_init__(self) -> None:
        for name in ("event", "id"):
            value = getattr(self, name)
            if value is None:
                continue
            text = str(value)
            if "\r" in text or "\n" in text or "\0" in text:
                raise ValueError(f"SSE field {name!r} must not contain CR, LF or NUL")
        if self.retry is not None and (type(self.retry) is not int or self.retry < 0):
            raise TypeError("SSE retry must be a non-negative int (milliseconds)")

    def encode(self) -> bytes:
        """Return the event's exact bytes, ending with the blank line."""
        lines: list[str] = []
        if self.id is not None:
            lines.append(f"id: {self.id}")
        if self.event is not None:
            lines.append(f"event: {self.event}")
        if self.retry is not None:
            lines.append(f"retry: {self.retry}")
        if self.data is not None:
            lines.extend(f"data: {line}" for line in _LINE_BREAK.split(self.data))
        return ("\n".join(lines) + "\n\n").encode("utf-8")


def dumps(value: Any) -> str:
    """Compact JSON for ``data:``: JSON escapes every control character, so a
    value can never contain a raw CR, LF or NUL."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def event(name: str, payload: Any, *, id: int | None = None) -> bytes:
    """Encode a named event whose data is ``payload`` as one line of JSON."""
    return ServerSentEvent(data=dumps(payload), event=name, id=id).encode()


def comment(text: str = "") -> bytes:
    """A comment line (ignored by clients; keeps proxies and idle timers awake)."""
    if "\r" in text or "\n" in text:
        raise ValueError("an SSE comment must be a single line")
    return f":{' ' if text else ''}{text}\n\n".encode()


def padding(size: int) -> bytes:
    """A comment of ``size`` bytes that pushes the stream through proxies and
    antivirus scanners that hold back the first few KiB of a response."""
    if size <= 0:
        return b""
    if size < 3:
        return b":\n\n"[:size] if size > 1 else b"\n"
    return b":" + b" " * (size - 3) + b"\n\n"


def retry(milliseconds: int) -> bytes:
    return ServerSentEvent(retry=milliseconds).encode()
