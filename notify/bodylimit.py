"""A request body larger than any endpoint accepts is refused before it is read.

Django's ASGI handler reads the whole body (into a temporary file past
``FILE_UPLOAD_MAX_MEMORY_SIZE``) before any middleware or view runs, so a
client that reaches uvicorn directly could make a server process take in
megabytes before authentication says no. The limit is Django's own
``DATA_UPLOAD_MAX_MEMORY_SIZE`` (``None``: no limit), which a view reading
``request.body`` or ``request.POST`` would enforce anyway, only later; as for
Django, it does not apply to ``multipart/form-data`` bodies, whose file parts
have limits of their own. A declared ``Content-Length`` over the limit is
answered 413 without reading anything; a chunked body is cut off with 413 as
soon as it passes the limit.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings

BODY = b'{"error":"request body too large"}'


class BodyTooLargeError(Exception):
    pass


def body_limit(scope: Any) -> int | None:
    """The most bytes this request's body may have, or None."""
    limit: int | None = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    if limit is None:
        return None
    for name, value in scope.get("headers", ()):
        if name.lower() == b"content-type" and value.lower().startswith(
            b"multipart/form-data"
        ):
            return None
    return limit


def declared_too_large(scope: Any, limit: int | None) -> bool:
    if limit is None:
        return False
    for name, value in scope.get("headers", ()):
        if name.lower() == b"content-length":
            try:
                return int(value) > limit
            except ValueError:
                return False  # the server has refused it already
    return False


def limited(receive: Any, limit: int | None) -> Any:
    """``receive``, raising :class:`BodyTooLargeError` once the body passes
    ``limit`` bytes."""
    if limit is None:
        return receive
    seen = 0

    async def receive_limited() -> Any:
        nonlocal seen
        message = await receive()
        seen += len(message.get("body", b""))
        if seen > limit:
            raise BodyTooLargeError
        return message

    return receive_limited


async def refuse(send: Any) -> None:
    """Answer 413 JSON and close the connection (the rest of the body is
    never read)."""
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(BODY)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": BODY})
