from django.urls import path, re_path

from notify.views import api, events, pages, service

# Names are reversed as "notify:<name>", so they never collide with a host
# project's own; the prefix is wherever the host includes these.
app_name = "notify"

urlpatterns = [
    path("", pages.inbox, name="inbox"),
    path("broadcast/", pages.broadcast, name="broadcast"),
    path("api/broadcasts/recent", pages.recent_broadcasts, name="recent-broadcasts"),
    path("events/", events.stream, name="events"),
    path("events/poll", events.poll_events, name="events-poll"),
    path("api/notifications", api.notifications, name="notifications"),
    path("api/notifications/read-all", api.mark_all_read, name="read-all"),
    path(
        "api/notifications/<int:notification_id>/read",
        api.mark_read,
        name="read",
    ),
    path("healthz", service.healthz, name="healthz"),
    path("metrics", service.metrics_view, name="metrics"),
    # Programs call these; a mistyped one is answered in JSON too (an
    # EventSource pointed at events/typo included). Only under notify's own
    # paths: a host that includes notify at its root may have an api/ of its
    # own further down its URLconf.
    re_path(
        r"^(?:api/(?:notifications|broadcasts)(?:/|$)|events/.)",
        api.no_such_endpoint,
    ),
]
