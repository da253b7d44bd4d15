"""The demo's URLconf plus the floors ``bench.floors`` measures requests
against, last, so that they are resolved as deep as notify's own views."""

from __future__ import annotations

from asgiref.sync import sync_to_async
from django.http import HttpRequest, JsonResponse
from django.urls import path

from notify.broker import get_broker
from project.urls import urlpatterns as project_urls


def _nothing() -> None:
    return None


async def empty(request: HttpRequest) -> JsonResponse:
    """Django's request handling and notify's middleware, and nothing else
    (the response's close, with Django's request signals, is handed to the
    request's thread as for every response)."""
    return JsonResponse({})


async def thread(request: HttpRequest) -> JsonResponse:
    """The same, plus one trip to the request's thread and back."""
    await sync_to_async(_nothing)()
    return JsonResponse({})


async def redis(request: HttpRequest) -> JsonResponse:
    """The same as ``empty``, plus one Redis round trip (PING)."""
    await get_broker().ping()
    return JsonResponse({})


urlpatterns = [
    *project_urls,
    path("floor/empty", empty),
    path("floor/thread", thread),
    path("floor/redis", redis),
]
