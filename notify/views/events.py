"""``GET /events/`` (the stream) and ``GET /events/poll`` (its fallback)."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponseBase, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt

from notify.history import aload_viewer
from notify.permissions import Caller
from notify.streams import event_stream, poll
from notify.views.http import (
    MAX_ID,
    authenticated,
    field_errors,
    int_param,
    json_response,
    methods,
)

CURSOR_PARAMS = ("last_event_id", "lastEventId")
POLL_DEFAULT, POLL_MAX = 25.0, 55.0


def _cursor(request: HttpRequest, errors: dict[str, list[str]]) -> int | None:
    # The header wins: EventSource sends it on every automatic reconnect, while
    # the URL still carries the cursor of the first connection.
    header = request.headers.get("Last-Event-ID", "").strip()
    if header:
        if header.isdigit() and header.isascii() and int(header) <= MAX_ID:
            return int(header)
        errors["Last-Event-ID"] = [f"Must be an integer between 0 and {MAX_ID}."]
        return None
    return int_param(request, CURSOR_PARAMS, errors)


@csrf_exempt
@methods("GET")
@authenticated
async def stream(request: HttpRequest, caller: Caller) -> HttpResponseBase:
    errors: dict[str, list[str]] = {}
    cursor = _cursor(request, errors)
    if errors:
        return field_errors(errors)
    # All sync work (session, user, groups) is done before the first byte;
    # the body then runs on the event loop alone.
    viewer = await aload_viewer(caller.user)
    response = StreamingHttpResponse(
        event_stream(viewer, cursor), content_type="text/event-stream; charset=utf-8"
    )
    response["Cache-Control"] = "no-cache, no-store, no-transform"
    response["X-Accel-Buffering"] = "no"
    return response


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
    viewer = await aload_viewer(caller.user)
    response = json_response(await poll(viewer, after, timeout))
    response["Cache-Control"] = "no-store"
    return response
