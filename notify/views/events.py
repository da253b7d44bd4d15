"""``GET /events/`` (the stream) and ``GET /events/poll`` (its fallback)."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from typing import Any

from django.http import HttpRequest, HttpResponseBase, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt

from notify import caps
from notify.opening import OpenerBusyError, aopen_stream
from notify.permissions import Caller
from notify.streams import event_stream, poll
from notify.views.http import (
    MAX_ID,
    authenticated,
    error,
    field_errors,
    int_param,
    json_response,
    methods,
    unauthenticated,
)
from notify.visibility import aload_viewer

CURSOR_PARAMS = ("last_event_id", "lastEventId")
CONTENT_TYPE = "text/event-stream; charset=utf-8"


class EventStreamResponse(StreamingHttpResponse):
    """A ``StreamingHttpResponse`` whose body is ready-made SSE bytes.

    The ASGI handler calls ``aiter(response)`` once every middleware has seen
    the response and its headers are encoded; the stream then stays open for
    hours and needs nothing more from the request (session, user, headers) or
    from its own headers and cookies, so they are dropped there. The generator
    already yields bytes, so it is handed over as is, without the two
    async-generator layers Django would add around every message.
    """

    def __init__(
        self, body: AsyncIterator[bytes], request: HttpRequest, slot: caps.Slot
    ) -> None:
        super().__init__(body, content_type=CONTENT_TYPE)
        self._body = body
        self._request: HttpRequest | None = request
        self._slot: caps.Slot | None = slot
        self["Cache-Control"] = "no-cache, no-store, no-transform"
        self["X-Accel-Buffering"] = "no"

    def __aiter__(self) -> AsyncIterator[bytes]:
        request, self._request = self._request, None
        if request is not None:
            # Its body is read; closing it now rather than with the response
            # spares the stream the request object and the bound close().
            request.close()
            closers: list[Any] = self._resource_closers  # type: ignore[attr-defined]
            with contextlib.suppress(ValueError):
                closers.remove(request.close)
            vars(request).clear()
        body = self._body
        # Of its own state the response keeps what close() uses, nothing more.
        state = vars(self)
        kept = {name: state[name] for name in _KEPT if name in state}
        state.clear()
        state.update(kept)
        return body

    def close(self) -> None:
        """Also frees the stream's slot (NOTIFY_MAX_STREAMS_PER_USER), however
        the response ended, even if its body never started."""
        slot, self._slot = self._slot, None
        try:
            super().close()
        finally:
            if slot is not None:
                slot.release()


# What HttpResponseBase.close() reads (tests/test_canary.py guards it), and
# the slot our close() frees.
_KEPT = ("_resource_closers", "closed", "_handler_class", "status_code", "_slot")


POLL_DEFAULT, POLL_MAX = 25.0, 55.0


def _cursor(request: HttpRequest, errors: dict[str, list[str]]) -> int | None:
    # The header wins: EventSource sends it on every automatic reconnect, while
    # the URL still carries the cursor of the first connection.
    header = request.META.get("HTTP_LAST_EVENT_ID", "").strip()
    if header:
        # The length first: int() refuses strings of more than 4,300 digits.
        if (
            header.isdigit()
            and header.isascii()
            and len(header) <= len(str(MAX_ID))
            and int(header) <= MAX_ID
        ):
            return int(header)
        errors["Last-Event-ID"] = [f"Must be an integer between 0 and {MAX_ID}."]
        return None
    return int_param(request, CURSOR_PARAMS, errors)


@csrf_exempt
@methods("GET")
async def stream(request: HttpRequest) -> HttpResponseBase:
    errors: dict[str, list[str]] = {}
    cursor = _cursor(request, errors)
    # Authentication, groups and the starting point, in one thread hop: the
    # body then runs on the event loop alone, with no database work unless the
    # client is behind.
    try:
        since = asyncio.get_running_loop().time()
        identity, opening = await aopen_stream(request, cursor)
    except OpenerBusyError:
        # A reconnect storm: a cheap answer now beats a slow one for everybody.
        # The spread of Retry-After spreads the next wave.
        retry = str(random.randint(2, 8))
        return error(503, "too many streams opening; retry", Retry_After=retry)
    if opening is None:
        return unauthenticated(bad_token=identity.bad_token)
    if errors:
        return field_errors(errors)
    slot = await caps.acquire(identity.user_id)
    if slot is None:
        return _too_many()
    return EventStreamResponse(event_stream(opening, since), request, slot)


def _too_many() -> HttpResponseBase:
    return error(
        429, "too many open streams for this user", Retry_After=caps.retry_after()
    )


@csrf_exempt
@methods("GET")
@authenticated
async def poll_events(request: HttpRequest, caller: Caller) -> HttpResponseBase:
    errors: dict[str, list[str]] = {}
    after = int_param(request, ["after"], errors)
    timeout = POLL_DEFAULT
    raw_timeout = request.GET.get("timeout", "")
    if raw_timeout:
        try:
            timeout = float(raw_timeout)
        except ValueError:
            errors["timeout"] = ["Must be a number of seconds."]
        else:
            if not 0 <= timeout <= POLL_MAX:
                errors["timeout"] = [f"Must be between 0 and {POLL_MAX:g} seconds."]
    if errors:
        return field_errors(errors)
    slot = await caps.acquire(caller.user_id)
    if slot is None:
        return _too_many()
    try:
        viewer = await aload_viewer(caller.user_id)
        credential = caller.token.pk if caller.token else _session_key(request)
        response = json_response(await poll(viewer, after, timeout, credential))
    finally:
        slot.release()
    response["Cache-Control"] = "no-store"
    return response


def _session_key(request: HttpRequest) -> str | None:
    session = getattr(request, "session", None)
    return getattr(session, "session_key", None)
