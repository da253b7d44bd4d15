"""The JSON API: publish, inbox, read state."""

from __future__ import annotations

import json
import re
from typing import Any

from asgiref.sync import sync_to_async
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.views.decorators.csrf import csrf_exempt

from notify import inbox, permissions, wire
from notify.exceptions import RateLimitedError, ValidationError
from notify.permissions import Caller, can_publish
from notify.publishing import Published, persist, send
from notify.tokens import bearer_secret, grant
from notify.validation import validate
from notify.views.http import (
    MAX_ID,
    authenticated,
    csrf_rejected,
    error,
    field_errors,
    int_param,
    json_response,
    methods,
    unauthenticated,
)

MAX_BODY = 64 * 1024
LIST_DEFAULT, LIST_MAX = 50, 200
# Deeper JSON is refused before parsing: how deep the parser itself goes
# before a RecursionError depends on the Python version (3.13 parses 5000
# levels that 3.11 refuses), and so would the answer.
MAX_DEPTH = 500
_STRING_OR_BRACKET = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _too_deep(text: str) -> bool:
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return False
    depth = 0
    for match in _STRING_OR_BRACKET.finditer(text):
        token = match.group()
        if token in ("[", "{"):
            depth += 1
            if depth > MAX_DEPTH:
                return True
        elif token in ("]", "}"):
            depth -= 1
    return False


def _json_body(request: HttpRequest) -> tuple[Any, HttpResponse | None]:
    content_type = request.content_type or ""
    if content_type.lower() != "application/json":
        return None, error(415, "Content-Type must be application/json")
    try:
        declared = int(request.headers.get("Content-Length") or 0)
    except ValueError:
        declared = 0
    try:
        if declared > MAX_BODY or len(request.body) > MAX_BODY:
            return None, error(413, f"request body over {MAX_BODY // 1024} KiB")
        text = request.body.decode("utf-8")
        if _too_deep(text):
            return None, error(400, "malformed JSON: nested too deeply")
        payload = json.loads(text, parse_constant=_reject_constant)
        # "\ud800" escapes decode to lone surrogates, which no database can
        # store: raises UnicodeEncodeError (a ValueError) here instead.
        json.dumps(payload, ensure_ascii=False).encode("utf-8")
        return payload, None
    except RequestDataTooBig:
        return None, error(413, f"request body over {MAX_BODY // 1024} KiB")
    except (UnicodeDecodeError, ValueError) as exc:
        return None, error(400, f"malformed JSON: {exc}")
    except RecursionError:
        return None, error(400, "malformed JSON: nested too deeply")


def _sender(request: HttpRequest) -> HttpResponse | int:
    """Who publishes: a bearer token's user (the token's row is all it takes;
    it needs no CSRF token), else the session's staff user. A response when
    nobody may."""
    secret = bearer_secret(request)
    if secret is not None:
        found = grant(secret)
        if found is None:
            return unauthenticated(bad_token=True)
        if not found.can_publish:
            return error(403, "this account may not publish notifications")
        return found.user_id
    caller = permissions.caller(request)
    if not caller.authenticated:
        return unauthenticated(bad_token=caller.bad_token)
    if not can_publish(caller):
        return error(403, "this account may not publish notifications")
    if rejected := csrf_rejected(request, caller):
        return rejected
    return caller.user_id


def _publish_sync(request: HttpRequest) -> HttpResponse | Published:
    """Everything of a publish up to the commit, in one trip to the request's
    thread: authentication, permission, CSRF, the body, validation, persist."""
    sender = _sender(request)
    if isinstance(sender, HttpResponse):
        return sender
    payload, problem = _json_body(request)
    if problem is not None:
        return problem
    try:
        return persist(validate(payload), sender_id=sender)
    except ValidationError as exc:
        return field_errors(exc.errors)
    except RateLimitedError as exc:
        return error(429, str(exc), Retry_After=str(exc.retry_after))


async def _publish(request: HttpRequest) -> HttpResponse:
    outcome = await sync_to_async(_publish_sync)(request)
    if isinstance(outcome, HttpResponse):
        return outcome
    await send(outcome.message)
    n = outcome.notification
    return json_response({**wire.to_wire(n), "recipients": n.recipients}, status=201)


async def _list(request: HttpRequest, caller: Caller) -> HttpResponse:
    errors: dict[str, list[str]] = {}
    unread = request.GET.get("unread", "0").lower()
    if unread not in ("0", "1", "true", "false", ""):
        errors["unread"] = ["Must be 1 or 0."]
    before = int_param(request, ["before"], errors, minimum=1)
    limit = int_param(request, ["limit"], errors, minimum=1, maximum=LIST_MAX)
    if errors:
        return field_errors(errors)
    result = await inbox.apage(
        caller.user_id,
        unread_only=unread in ("1", "true"),
        before=before,
        limit=limit or LIST_DEFAULT,
    )
    response = json_response(result)
    response["Cache-Control"] = "no-store"
    return response


@csrf_exempt
@methods("GET", "POST")
async def notifications(request: HttpRequest) -> HttpResponseBase:
    if request.method == "POST":
        return await _publish(request)
    return await _list_authenticated(request)


@authenticated
async def _list_authenticated(request: HttpRequest, caller: Caller) -> HttpResponse:
    return await _list(request, caller)


@csrf_exempt
@methods("POST")
@authenticated
async def mark_read(
    request: HttpRequest, caller: Caller, notification_id: int
) -> HttpResponse:
    if rejected := csrf_rejected(request, caller):
        return rejected
    if notification_id > MAX_ID or not await inbox.amark_read(
        caller.user_id, notification_id
    ):
        return error(404, "no such notification")
    return HttpResponse(status=204)


@csrf_exempt
async def no_such_endpoint(request: HttpRequest) -> HttpResponse:
    """Any other path under ``api/notifications``, ``api/broadcasts`` or
    ``events/``: a JSON 404 for the program that asked, not the site's HTML
    page, whatever the method."""
    return error(404, "no such endpoint")


@csrf_exempt
@methods("POST")
@authenticated
async def mark_all_read(request: HttpRequest, caller: Caller) -> HttpResponse:
    if rejected := csrf_rejected(request, caller):
        return rejected
    await inbox.amark_all_read(caller.user_id)
    return HttpResponse(status=204)
