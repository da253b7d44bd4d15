"""A host project's URLconf: notify under /notifications/, Django's auth
under /site/accounts/, and a page of the host's own with the bell."""

from __future__ import annotations

import asyncio
import mimetypes
from pathlib import Path

from django.contrib import admin
from django.contrib.auth.decorators import login_required
from django.contrib.staticfiles import finders
from django.http import Http404, HttpRequest, HttpResponse
from django.template import engines
from django.urls import URLPattern, URLResolver, include, path, re_path

HOST_PAGE = """{% load notify %}<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>Host dashboard</title></head>
<body>
  <header id="host-header">Host site {% notify_bell %}</header>
  <main><h1>Dashboard</h1><p>Nothing of notify's here but the bell.</p></main>
</body>
</html>
"""


@login_required
def dashboard(request: HttpRequest) -> HttpResponse:
    page = engines["django"].from_string(HOST_PAGE)
    return HttpResponse(page.render({}, request))


async def static(request: HttpRequest, path: str) -> HttpResponse:
    """The static files, read whole (they are small). Django's ``serve`` view
    answers a ``FileResponse``, whose synchronous iterator Django's ASGI
    handling warns about."""
    found = finders.find(path)
    if not isinstance(found, str):
        raise Http404(path)
    content_type = mimetypes.guess_type(found)[0] or "application/octet-stream"
    body = await asyncio.to_thread(Path(found).read_bytes)
    return HttpResponse(body, content_type=content_type)


urlpatterns: list[URLPattern | URLResolver] = [
    path("admin/", admin.site.urls),
    path("site/accounts/", include("django.contrib.auth.urls")),
    path("notifications/", include("notify.urls")),
    path("dashboard/", dashboard, name="dashboard"),
    # The test servers run without DEBUG and without nginx in front.
    re_path(r"^static/(?P<path>.*)$", static),
]

handler500 = "notify.views.http.server_error"
