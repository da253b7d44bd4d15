"""Small helpers shared by the JSON endpoints."""

from __future__ import annotations

import sys
from collections.abc import Callable, Coroutine, Iterable
from functools import wraps
from typing import Any

from django.core.exceptions import DisallowedHost, RequestDataTooBig
from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, HttpResponseBase, JsonResponse
from django.middleware.csrf import CsrfViewMiddleware

from notify.permissions import Caller, acaller

View = Callable[..., Coroutine[Any, Any, HttpResponseBase]]


MAX_ID = 2**63 - 1  # the database's integer range

COMPACT = {"separators": (",", ":"), "ensure_ascii": False}


def json_response(data: Any, status: int = 200) -> JsonResponse:
    """JSON on one line, no padding (the wire format)."""
    return JsonResponse(data, status=status, safe=False, json_dumps_params=COMPACT)


def error(status: int, message: str, **headers: str) -> JsonResponse:
    response = json_response({"error": message}, status=status)
    for name, value in headers.items():
        response[name.replace("_", "-")] = value
    return response


def server_error(request: HttpRequest) -> JsonResponse:
    """A ``handler500`` that answers JSON: 503 with ``Retry-After`` when the
    database is busy or unreachable (a lock held past its timeout, a dropped
    connection), which passes; 500 for anything else. Django calls it while
    the exception is being handled, so ``sys.exc_info()`` names it."""
    if isinstance(sys.exc_info()[1], OperationalError | InterfaceError):
        return error(503, "the database is busy or unavailable; retry", Retry_After="5")
    return error(500, "internal error")


def bad_request(request: HttpRequest, exception: Exception) -> JsonResponse:
    """A ``handler400`` that answers JSON: a request Django refuses before any
    view (a ``Host`` header not in ``ALLOWED_HOSTS``, too many fields) gets
    ``{"error": ...}``, not Django's HTML page."""
    if isinstance(exception, DisallowedHost):
        return error(400, "this Host header is not served here")
    if isinstance(exception, RequestDataTooBig):
        return error(400, "request body too large")
    return error(400, "bad request")


def field_errors(errors: dict[str, list[str]], status: int = 400) -> JsonResponse:
    return json_response({"errors": errors}, status=status)


def unauthenticated(*, bad_token: bool) -> JsonResponse:
    message = "invalid API token" if bad_token else "authentication required"
    return error(401, message, WWW_Authenticate='Bearer realm="notify"')


def methods(*allowed: str) -> Callable[[View], View]:
    """Answer other methods with a JSON 405 (Django's is HTML)."""

    def decorate(view: View) -> View:
        @wraps(view)
        async def wrapper(
            request: HttpRequest, *args: Any, **kwargs: Any
        ) -> HttpResponseBase:
            if request.method not in allowed:
                return error(
                    405,
                    f"method {request.method} not allowed",
                    Allow=", ".join(allowed),
                )
            return await view(request, *args, **kwargs)

        return wrapper

    return decorate


def authenticated(view: View) -> View:
    """Authenticate (bearer token, else session) before the view runs, and
    pass the :class:`Caller` as its second argument; 401 otherwise."""

    @wraps(view)
    async def wrapper(
        request: HttpRequest, *args: Any, **kwargs: Any
    ) -> HttpResponseBase:
        caller = await acaller(request)
        if not caller.authenticated:
            return unauthenticated(bad_token=caller.bad_token)
        return await view(request, caller, *args, **kwargs)

    return wrapper


def csrf_rejected(request: HttpRequest, caller: Caller) -> JsonResponse | None:
    """Session-authenticated writes need Django's CSRF token; bearer tokens
    are not sent automatically by browsers, so they need none."""
    if not caller.by_session:
        return None
    check = CsrfViewMiddleware(lambda r: HttpResponse())
    check.process_request(request)
    if check.process_view(request, lambda r: HttpResponse(), (), {}) is not None:
        return error(403, "CSRF token missing or incorrect")
    return None


def int_param(
    request: HttpRequest,
    names: Iterable[str],
    errors: dict[str, list[str]],
    *,
    minimum: int = 0,
    maximum: int = MAX_ID,
) -> int | None:
    """The first of ``names`` present in the query string, as an int."""
    for name in names:
        raw = request.GET.get(name)
        if raw is None or raw == "":
            continue
        try:
            value = int(raw)
        except ValueError:
            errors[name] = ["Must be an integer."]
            return None
        if not minimum <= value <= maximum:
            errors[name] = [f"Must be between {minimum} and {maximum}."]
            return None
        return value
    return None
