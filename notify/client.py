"""What the browser client and the pages need from Django: every URL reversed
(so notify works under whatever prefix a host includes it), the login page,
the user's share key, the CSRF token and the cursor to resume from."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import HttpRequest
from django.middleware.csrf import get_token
from django.shortcuts import resolve_url
from django.urls import reverse

from notify import visibility
from notify.conf import conf

_ID = 2147483647  # stands for {id} while reversing a URL


def client_config(request: HttpRequest) -> dict[str, Any]:
    """The JSON ``{% notify_client %}`` renders for ``notify/js/page.js``.

    ``lastEventId`` is the newest notification the user could see when the
    page was rendered: the client resumes after it, so a list a widget loads
    afterwards and the stream overlap (ids are deduplicated) instead of
    leaving a gap."""
    user_id = int(request.user.pk or 0)
    return {
        "user": str(user_id),
        "events": reverse("notify:events"),
        "poll": reverse("notify:events-poll"),
        "notifications": reverse("notify:notifications"),
        "read": reverse("notify:read", args=[_ID]).replace(str(_ID), "{id}"),
        "readAll": reverse("notify:read-all"),
        "recent": reverse("notify:recent-broadcasts"),
        "inbox": reverse("notify:inbox"),
        "login": resolve_url(settings.LOGIN_URL),
        "retry": conf.retry_ms,
        "csrf": get_token(request),
        "lastEventId": visibility.newest_visible_id(user_id),
    }
