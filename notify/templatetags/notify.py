"""``{% load notify %}``: notify's live widgets on any page of a host site.

- ``{% notify_client %}``: the page's client configuration (URLs reversed
  here, the user, the CSRF token, the cursor) and ``page.js``. Rendered once
  per request, however many widgets ask for it; renders nothing for an
  anonymous visitor.
- ``{% notify_bell %}``: a bell with the unread count and a dropdown of the
  latest notifications (mark read, a link to the inbox), kept live by the
  page's one client. Renders the template ``notify/bell.html``, which a host
  may override.
"""

from __future__ import annotations

from django import template
from django.http import HttpRequest
from django.template.context import Context
from django.template.loader import render_to_string
from django.templatetags.static import static
from django.urls import reverse
from django.utils.html import format_html, json_script
from django.utils.safestring import SafeString, mark_safe

from notify.client import client_config

register = template.Library()

CONFIG_ELEMENT_ID = "notify-client-config"


def _request(context: Context) -> HttpRequest | None:
    request = context.get("request")
    if not isinstance(request, HttpRequest):
        return None
    user = getattr(request, "user", None)
    return request if user is not None and user.is_authenticated else None


def _first_time(request: HttpRequest, what: str) -> bool:
    """True the first time ``what`` is rendered for this request: a page has
    one client configuration, one bell script, whatever includes them."""
    done: set[str] = request.__dict__.setdefault("_notify_rendered", set())
    if what in done:
        return False
    done.add(what)
    return True


def _count(request: HttpRequest) -> int:
    number = int(request.__dict__.get("_notify_bells", 0)) + 1
    request.__dict__["_notify_bells"] = number
    return number


@register.simple_tag(takes_context=True)
def notify_client(context: Context) -> SafeString:
    request = _request(context)
    if request is None or not _first_time(request, "client"):
        return mark_safe("")
    return format_html(
        '{}\n<script type="module" src="{}"></script>',
        json_script(client_config(request), CONFIG_ELEMENT_ID),
        static("notify/js/page.js"),
    )


@register.simple_tag(takes_context=True)
def notify_bell(context: Context) -> SafeString:
    request = _request(context)
    if request is None:
        return mark_safe("")
    return mark_safe(
        render_to_string(
            "notify/bell.html",
            {
                "client": notify_client(context),
                "first_bell": _first_time(request, "bell"),
                "bell_id": f"notify-bell-{_count(request)}",
                "inbox_url": reverse("notify:inbox"),
            },
            request=request,
        )
    )
