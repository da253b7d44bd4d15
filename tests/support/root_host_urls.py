"""A host project's URLconf that includes notify at its root, with an api/ of
its own after it and a page under events/ before it (notify answers every
other events/ path)."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.urls import URLPattern, URLResolver, include, path


def orders(request: HttpRequest) -> HttpResponse:
    return HttpResponse(b"the host's orders", content_type="text/plain")


def calendar(request: HttpRequest) -> HttpResponse:
    return HttpResponse(b"the host's calendar", content_type="text/plain")


urlpatterns: list[URLPattern | URLResolver] = [
    path("events/calendar", calendar),
    path("", include("notify.urls")),
    path("api/orders", orders),
]
