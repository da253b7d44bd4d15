"""Django's standard middleware, run on the event loop where it does no I/O.

Under ASGI, every hook of a classic (``MiddlewareMixin``) middleware runs in a
worker thread through ``sync_to_async``: with Django's seven usual ones that
is thirteen round trips to a thread per request (a context copy, an executor
hand-off, a wake-up of the loop through its self-pipe), about a third of the
CPU of opening a stream or publishing (docs/PERFORMANCE.md). Most of those
hooks only read headers and cookies or set response headers.

The classes here are Django's own, with those hooks called directly on the
event loop. A hook that can reach the database keeps its thread: saving a
session that changed, storing messages that were read or added, and reading
the CSRF secret from the session when ``CSRF_USE_SESSIONS`` is on.
"""

from __future__ import annotations

from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth import middleware as auth
from django.contrib.messages import middleware as messages
from django.contrib.messages.storage import default_storage
from django.contrib.sessions import middleware as sessions
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.middleware import clickjacking, common, csrf, security
from django.utils.deprecation import MiddlewareMixin
from django.utils.functional import SimpleLazyObject, empty


class OnLoopMixin(MiddlewareMixin):
    """Runs ``process_request`` and ``process_response`` on the event loop
    unless :meth:`request_needs_thread` or :meth:`response_needs_thread` says
    otherwise. Synchronous (WSGI) requests are unchanged."""

    def request_needs_thread(self, request: HttpRequest) -> bool:
        return False

    def response_needs_thread(
        self, request: HttpRequest, response: HttpResponseBase
    ) -> bool:
        return False

    async def __acall__(self, request: HttpRequest) -> Any:
        response = None
        process_request = getattr(self, "process_request", None)
        if process_request is not None:
            if self.request_needs_thread(request):
                response = await sync_to_async(process_request)(request)
            else:
                response = process_request(request)
        response = response or await self.get_response(request)  # type: ignore[misc]
        process_response = getattr(self, "process_response", None)
        if process_response is not None:
            if self.response_needs_thread(request, response):
                response = await sync_to_async(process_response)(request, response)
            else:
                response = process_response(request, response)
        return response


class SecurityMiddleware(OnLoopMixin, security.SecurityMiddleware):
    pass


class SessionMiddleware(OnLoopMixin, sessions.SessionMiddleware):
    def process_request(self, request: HttpRequest) -> None:
        key = request.COOKIES.get(settings.SESSION_COOKIE_NAME)
        if key is not None and "\x00" in key:
            # No session has such a key, and PostgreSQL refuses NUL in text:
            # looking it up would be a database error instead of "nobody".
            key = None
        request.session = self.SessionStore(key)

    # Creating the session store is lazy; only a save reaches the database.
    def response_needs_thread(
        self, request: HttpRequest, response: HttpResponseBase
    ) -> bool:
        session = getattr(request, "session", None)
        return session is not None and bool(
            session.modified or settings.SESSION_SAVE_EVERY_REQUEST
        )


class CommonMiddleware(OnLoopMixin, common.CommonMiddleware):
    pass


class CsrfViewMiddleware(OnLoopMixin, csrf.CsrfViewMiddleware):
    def request_needs_thread(self, request: HttpRequest) -> bool:
        return bool(settings.CSRF_USE_SESSIONS)

    def response_needs_thread(
        self, request: HttpRequest, response: HttpResponseBase
    ) -> bool:
        return bool(settings.CSRF_USE_SESSIONS)

    # A coroutine function, so Django calls it as it is instead of in a thread.
    async def process_view(  # type: ignore[override]
        self,
        request: HttpRequest,
        callback: Any,
        callback_args: Any,
        callback_kwargs: Any,
    ) -> HttpResponseBase | None:
        check = super().process_view
        args = (request, callback, callback_args, callback_kwargs)
        if settings.CSRF_USE_SESSIONS:
            return await sync_to_async(check)(*args)
        return check(*args)


class AuthenticationMiddleware(OnLoopMixin, auth.AuthenticationMiddleware):
    # Sets lazy ``request.user`` and ``request.auser``; nothing is loaded yet.
    pass


class MessageMiddleware(OnLoopMixin, messages.MessageMiddleware):
    """The message storage is built on first use: most requests (every event
    stream, every API call) never touch it, and building it (a cookie signer
    and two storages) costs about a twentieth of opening a stream. Storage
    never used was neither read nor added to, so it has nothing to write."""

    def process_request(self, request: HttpRequest) -> None:
        request._messages = SimpleLazyObject(lambda: default_storage(request))  # type: ignore[attr-defined]

    def process_response(
        self, request: HttpRequest, response: HttpResponse
    ) -> HttpResponse:
        if _unused(getattr(request, "_messages", None)):
            return response
        return super().process_response(request, response)

    # Stored messages are written back only if they were read or added.
    def response_needs_thread(
        self, request: HttpRequest, response: HttpResponseBase
    ) -> bool:
        storage = getattr(request, "_messages", None)
        if storage is None or _unused(storage):
            return False
        return bool(storage.used or storage.added_new)


def _unused(storage: object) -> bool:
    return isinstance(storage, SimpleLazyObject) and storage._wrapped is empty


class XFrameOptionsMiddleware(OnLoopMixin, clickjacking.XFrameOptionsMiddleware):
    pass
