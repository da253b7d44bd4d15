"""A host project's URLconf that includes notify at its root, with an api/ of
its own after it."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.urls import URLPattern, URLResolver, include, path


def orders(request: HttpRequest) -> HttpResponse:
    return HttpResponse(b"the host's orders", content_type="text/plain")


urlpatterns: list[URLPattern | URLResolver] = [
    path("", include("notify.urls")),
    path("api/orders", orders),
]
