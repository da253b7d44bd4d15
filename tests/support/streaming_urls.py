"""A URLconf with one streaming view, for the handler's chunking test."""

from __future__ import annotations

from collections.abc import AsyncIterator

from django.core.handlers.asgi import ASGIHandler
from django.http import HttpRequest, StreamingHttpResponse
from django.urls import path

SIZE = ASGIHandler.chunk_size


async def _parts() -> AsyncIterator[bytes]:
    yield b"a" * 10
    yield b"b" * SIZE
    yield b"c" * (2 * SIZE + 5)


async def parts(request: HttpRequest) -> StreamingHttpResponse:
    response = StreamingHttpResponse(_parts(), content_type="text/plain")
    response.set_cookie("flavour", "plain")
    return response


urlpatterns = [path("parts", parts)]
