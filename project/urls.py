from django.contrib import admin
from django.urls import URLPattern, URLResolver, include, path

urlpatterns: list[URLPattern | URLResolver] = [
    path("admin/", admin.site.urls),
    path("accounts/", include("django.contrib.auth.urls")),
    path("", include("notify.urls")),
]

# Errors answer JSON, never an HTML page; a database that is busy or gone is a
# 503 with Retry-After.
handler400 = "notify.views.http.bad_request"
handler500 = "notify.views.http.server_error"
