"""``{% load notify %}``: the bell and the page's one client on a host's own
pages, and notify's pages inside the host's base template."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import AnonymousUser, User
from django.template import engines
from django.test import AsyncClient, RequestFactory
from playwright.async_api import Browser, BrowserContext, Page, expect

from notify.checks import check_settings
from tests.support.browser import watch
from tests.support.prefixed import PREFIX, PrefixedServer
from tests.support.servers import ROOT
from tests.test_browser import session_for, wait_until

HOST_BASE = """{% load notify %}<html><head><title>{% block title %}{% endblock %}</title>
{% block extra_head %}{% endblock %}</head><body><nav>Host nav {% notify_bell %}</nav>
{% block content %}{% endblock %}{% block extra_scripts %}{% endblock %}</body></html>"""


def render(source: str, user: Any) -> str:
    request = RequestFactory().get("/somewhere/")
    request.user = user
    return str(engines["django"].from_string(source).render({}, request))


def host_templates(templates: dict[str, str]) -> list[dict[str, Any]]:
    """The demo's template settings with a host's own templates in front."""
    return [
        {
            "BACKEND": "django.template.backends.django.DjangoTemplates",
            "DIRS": [ROOT / "templates"],
            "OPTIONS": {
                "context_processors": [
                    "django.template.context_processors.request",
                    "django.contrib.auth.context_processors.auth",
                ],
                "loaders": [
                    ("django.template.loaders.locmem.Loader", templates),
                    "django.template.loaders.filesystem.Loader",
                    "django.template.loaders.app_directories.Loader",
                ],
            },
        }
    ]


def test_an_anonymous_visitor_gets_no_bell_and_no_client(db):
    assert (
        render("{% load notify %}{% notify_bell %}{% notify_client %}", AnonymousUser())
        == ""
    )


def test_the_client_is_loaded_once_per_page_however_many_widgets_ask(users):
    html = render(
        "{% load notify %}{% notify_client %}{% notify_bell %}{% notify_bell %}"
        "{% notify_client %}",
        users["alice"],
    )
    assert html.count('id="notify-client-config"') == 1
    assert html.count("/static/notify/js/page.js") == 1
    assert html.count("/static/notify/js/bell.js") == 1
    assert html.count("/static/notify/css/notify-bell.css") == 1
    assert html.count("data-notify-bell ") == 2
    assert 'id="notify-bell-1"' in html and 'id="notify-bell-2"' in html
    assert 'href="/">Open the inbox' in html


async def test_the_pages_extend_the_base_template_the_host_chooses(users, settings):
    settings.TEMPLATES = host_templates({"host/base.html": HOST_BASE})
    settings.NOTIFY_BASE_TEMPLATE = "host/base.html"
    client = AsyncClient()
    await client.aforce_login(users["admin"])
    pages = [("/", "inbox.js"), ("/broadcast/", "broadcast.js")]
    for path, script in pages:
        html = (await client.get(path)).content.decode()
        assert "Host nav" in html, path
        assert 'class="topbar"' not in html, path  # notify's own layout
        assert f"/static/notify/js/{script}" in html
        assert "/static/notify/css/notify.css" in html
    inbox = (await client.get("/")).content.decode()
    # The bell in the host's layout and the inbox share the page's one client.
    assert inbox.count('id="notify-client-config"') == 1
    assert inbox.count("data-notify-bell ") == 1
    assert "<title>Inbox · notify</title>" in inbox


async def test_a_hosts_own_base_html_is_neither_used_nor_replaced(users, settings):
    settings.TEMPLATES = host_templates(
        {"base.html": "HOST BASE {% block content %}{% endblock %}"}
    )
    client = AsyncClient()
    await client.aforce_login(users["alice"])
    inbox = (await client.get("/")).content.decode()
    assert "HOST BASE" not in inbox
    assert 'class="topbar"' in inbox
    # ...and the host's base.html still is the host's.
    assert render("{% extends 'base.html' %}", users["alice"]).startswith("HOST BASE")


@pytest.mark.parametrize("value", ["host/missing.html", "", 7])
def test_a_base_template_that_cannot_be_used_fails_the_checks(settings, value):
    settings.NOTIFY_BASE_TEMPLATE = value
    errors = [m for m in check_settings() if m.id == "notify.E017"]
    assert len(errors) == 1
    assert errors[0].msg.startswith("NOTIFY_BASE_TEMPLATE: ")


def test_the_default_and_a_hosts_base_template_pass_the_checks(settings):
    assert not [m for m in check_settings() if m.id == "notify.E017"]
    settings.TEMPLATES = host_templates({"host/base.html": HOST_BASE})
    settings.NOTIFY_BASE_TEMPLATE = "host/base.html"
    assert not [m for m in check_settings() if m.id == "notify.E017"]


# -- in Chromium, against real uvicorn with notify under /notifications/ ----


async def signed_in_context(
    browser: Browser, host: PrefixedServer, user: User
) -> BrowserContext:
    context = await browser.new_context(base_url=host.url)
    context.set_default_timeout(10_000)
    session = await session_for(user)
    await context.add_cookies(
        [{"name": "sessionid", "value": session, "url": host.url}]
    )
    return context


def bell(page: Page) -> Any:
    return page.locator("#host-header [data-notify-bell]")


@pytest.mark.browser
async def test_the_bell_on_a_host_page_is_live_and_shares_one_connection_with_the_inbox(
    prefixed_host, users, tokens, browser
):
    host: PrefixedServer = prefixed_host
    errors: list[str] = []
    context = await signed_in_context(browser, host, users["alice"])
    dashboard = watch(await context.new_page(), errors)
    await dashboard.goto("/dashboard/")
    await expect(bell(dashboard)).to_have_attribute("data-status", "live")
    count = bell(dashboard).locator("[data-notify-count]")
    await expect(count).to_be_hidden()

    # The inbox in another tab, inside the host's layout with its own bell.
    inbox = watch(await context.new_page(), errors)
    await inbox.goto(f"{PREFIX}/")
    await expect(inbox.locator("#host-header")).to_contain_text("Host site")
    await expect(inbox.locator("#connection")).to_have_attribute("data-status", "live")
    await expect(inbox.locator("#connection")).to_have_attribute(
        "data-role", "follower"
    )

    async def one_stream() -> bool:
        return await host.open_streams() == 1

    await wait_until(one_stream, "the tabs share one stream")

    first = await host.publish(tokens["admin"], "Deploy at noon")
    second = await host.publish(tokens["admin"], "Coffee machine fixed")
    await expect(count).to_have_text("2")
    await expect(bell(inbox).locator("[data-notify-count]")).to_have_text("2")
    await expect(inbox.locator(f'#notes .note[data-id="{second}"]')).to_be_visible()

    await bell(dashboard).locator("[data-notify-toggle]").click()
    items = bell(dashboard).locator("[data-notify-list] li")
    await expect(items).to_have_count(2)
    await expect(items.first).to_contain_text("Coffee machine fixed")  # newest first
    await expect(items.first).to_have_attribute("data-read", "false")
    await expect(bell(dashboard).locator(f'a[href="{PREFIX}/"]')).to_have_text(
        "Open the inbox"
    )

    await items.first.locator(".notify-bell__read").click()
    await expect(count).to_have_text("1")
    await expect(items.first).to_have_attribute("data-read", "true")
    # The other tab's inbox and bell follow the mark made from the dropdown.
    await expect(inbox.locator(f'#notes .note[data-id="{second}"]')).to_have_attribute(
        "data-read", "true"
    )
    await expect(inbox.locator("#unread-count")).to_have_text("1")
    await expect(bell(inbox).locator("[data-notify-count]")).to_have_text("1")

    await bell(dashboard).locator("[data-notify-read-all]").click()
    await expect(count).to_be_hidden()
    await expect(inbox.locator(f'#notes .note[data-id="{first}"]')).to_have_attribute(
        "data-read", "true"
    )
    await expect(bell(inbox).locator("[data-notify-count]")).to_be_hidden()
    assert await host.open_streams() == 1

    # The dashboard tab led; when it closes, the inbox tab takes over.
    await dashboard.close()
    await expect(inbox.locator("#connection")).to_have_attribute("data-role", "leader")
    third = await host.publish(tokens["admin"], "After the handover")
    await expect(inbox.locator(f'#notes .note[data-id="{third}"]')).to_be_visible()
    await expect(bell(inbox).locator("[data-notify-count]")).to_have_text("1")
    await wait_until(one_stream, "one stream after the handover")
    await context.close()
    assert errors == []
