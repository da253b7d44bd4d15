"""A host project's URLconf: notify under /notifications/, Django's auth
under /site/accounts/, and a page of the host's own with the bell."""

from __future__ import annotations

from django.contrib import admin
from django.contrib.auth.decorators import login_required
from django.contrib.staticfiles.views import serve
from django.http import HttpRequest, HttpResponse
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


urlpatterns: list[URLPattern | URLResolver] = [
    path("admin/", admin.site.urls),
    path("site/accounts/", include("django.contrib.auth.urls")),
    path("notifications/", include("notify.urls")),
    path("dashboard/", dashboard, name="dashboard"),
    # The test servers run without DEBUG and without nginx in front.
    re_path(r"^static/(?P<path>.*)$", serve, {"insecure": True}),
]

handler500 = "notify.views.http.server_error"
