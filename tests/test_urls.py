"""notify under any URL prefix: a host includes ``notify.urls`` at
/notifications/ (tests/support/prefixed_urls.py) and the pages, the browser
client, the stream, the long poll and the API all follow."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import httpx
import pytest
from django.contrib.auth.models import User
from django.test import AsyncClient
from playwright.async_api import expect

from tests.support.browser import watch
from tests.support.prefixed import PREFIX, PrefixedServer
from tests.support.servers import ROOT, auth, manage
from tests.test_access import Stream
from tests.test_browser import session_for

CONFIG = re.compile(
    r'<script id="(notify-client-config|notify-config)" type="application/json">(.*?)</script>',
    re.S,
)
# Prefix-free paths notify's own views answer; none may be written into the
# browser code or the page templates.
FIXED_PATHS = ("/events/", "/api/", "/accounts/", "/broadcast/")


@pytest.fixture
def prefixed(settings: Any) -> None:
    settings.ROOT_URLCONF = "tests.support.prefixed_urls"
    settings.LOGIN_URL = "login"


def configs(html: str) -> dict[str, dict[str, Any]]:
    return {name: json.loads(body) for name, body in CONFIG.findall(html)}


async def signed_in(user: User) -> AsyncClient:
    client = AsyncClient()
    await client.aforce_login(user)
    return client


async def test_the_pages_give_the_browser_urls_under_the_prefix(prefixed, users):
    inbox = await (await signed_in(users["alice"])).get(f"{PREFIX}/")
    assert inbox.status_code == 200
    config = configs(inbox.content.decode())["notify-client-config"]
    assert config | {"csrf": "", "lastEventId": 0} == {
        "user": str(users["alice"].pk),
        "events": f"{PREFIX}/events/",
        "poll": f"{PREFIX}/events/poll",
        "notifications": f"{PREFIX}/api/notifications",
        "read": f"{PREFIX}/api/notifications/{{id}}/read",
        "readAll": f"{PREFIX}/api/notifications/read-all",
        "recent": f"{PREFIX}/api/broadcasts/recent",
        "inbox": f"{PREFIX}/",
        "login": "/site/accounts/login/",  # LOGIN_URL = "login", resolved
        "retry": 3000,
        "csrf": "",
        "lastEventId": 0,
    }
    assert config["csrf"]

    console = await (await signed_in(users["admin"])).get(f"{PREFIX}/broadcast/")
    assert console.status_code == 200
    html = console.content.decode()
    assert configs(html)["notify-config"]["notifications"] == (
        f"{PREFIX}/api/notifications"
    )
    assert configs(html)["notify-config"]["recent"] == f"{PREFIX}/api/broadcasts/recent"
    assert f'href="{PREFIX}/"' in html  # the top bar's links
    assert f'href="{PREFIX}/broadcast/"' in html


async def test_signing_in_is_asked_at_the_hosts_login_url(prefixed, users):
    response = await AsyncClient().get(f"{PREFIX}/")
    assert response.status_code == 302
    assert response["Location"] == f"/site/accounts/login/?next={PREFIX}/"


async def test_the_api_and_the_long_poll_work_under_the_prefix(prefixed, client_for):
    admin, alice = client_for("admin"), client_for("alice")
    unprefixed = await admin.post(
        "/api/notifications", {"audience": "all", "title": "x"}, "application/json"
    )
    assert unprefixed.status_code == 404
    published = await admin.post(
        f"{PREFIX}/api/notifications",
        {"audience": "all", "title": "Under a prefix"},
        "application/json",
    )
    assert published.status_code == 201, published.content
    sent = published.json()["id"]

    polled = await alice.get(f"{PREFIX}/events/poll", {"after": 0, "timeout": 0})
    assert polled.status_code == 200
    assert [e["data"]["title"] for e in polled.json()["events"]] == ["Under a prefix"]
    inbox = (await alice.get(f"{PREFIX}/api/notifications")).json()
    assert (inbox["unread_count"], inbox["results"][0]["id"]) == (1, sent)
    read = await alice.post(f"{PREFIX}/api/notifications/{sent}/read")
    assert read.status_code == 204
    assert (await alice.post(f"{PREFIX}/api/notifications/read-all")).status_code == 204
    inbox = (await alice.get(f"{PREFIX}/api/notifications")).json()
    assert inbox["unread_count"] == 0


def test_the_browser_code_and_the_templates_hard_code_no_url():
    files = [
        *(ROOT / "static" / "js").rglob("*.js"),
        *(ROOT / "templates" / "notify").rglob("*.html"),
    ]
    assert len(files) > 8
    for file in files:
        text = file.read_text()
        for fixed in FIXED_PATHS:
            assert f'"{fixed}' not in text and f"'{fixed}" not in text, (file, fixed)


async def test_the_stream_runs_under_the_prefix_on_uvicorn(prefixed_host, tokens):
    host: PrefixedServer = prefixed_host
    async with httpx.AsyncClient(base_url=host.url, timeout=10) as client:
        unprefixed = await client.get("/events/", headers=auth(tokens["alice"]))
        assert unprefixed.status_code == 404
    stream = Stream(host.url + PREFIX, headers=auth(tokens["alice"]))
    try:
        async with asyncio.timeout(10):
            await stream.ready.wait()
        assert stream.status == 200
        sent = await host.publish(tokens["admin"], "Streamed under a prefix")
        async with asyncio.timeout(10):
            while not stream.named("notification"):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        assert [e.json()["id"] for e in stream.named("notification")] == [sent]
    finally:
        await stream.close()


@pytest.mark.browser
async def test_the_inbox_under_a_prefix_goes_live_and_signs_out_to_the_hosts_login(
    prefixed_host, users, tokens, browser, server_env
):
    host: PrefixedServer = prefixed_host
    context = await browser.new_context(base_url=host.url)
    context.set_default_timeout(10_000)
    session = await session_for(users["alice"])
    await context.add_cookies(
        [{"name": "sessionid", "value": session, "url": host.url}]
    )
    errors: list[str] = []
    page = watch(await context.new_page(), errors)
    streams: list[str] = []
    page.on(
        "request",
        lambda r: streams.append(r.url) if r.resource_type == "eventsource" else None,
    )
    await page.goto(f"{PREFIX}/")
    connection = page.locator("#connection")
    await expect(connection).to_have_attribute("data-status", "live")
    await expect(connection).to_have_attribute("data-transport", "stream")
    sent = await host.publish(tokens["admin"], "Live under a prefix")
    await expect(page.locator(f'#notes .note[data-id="{sent}"]')).to_be_visible()
    await expect(page.locator("#unread-count")).to_have_text("1")
    assert streams and all(s.startswith(f"{host.url}{PREFIX}/events/") for s in streams)

    env = server_env | {
        "REDIS_URL": host.env["REDIS_URL"],
        "DJANGO_SETTINGS_MODULE": "tests.support.prefixed_settings",
    }
    code = "from django.contrib.sessions.backends.db import SessionStore\n" + (
        f"SessionStore({session!r}).flush()"
    )
    await asyncio.to_thread(manage, env, "shell", "-c", code)
    await page.wait_for_url(re.compile(r"/site/accounts/login/\?next="), timeout=5000)
    await context.close()
    assert errors == []
    # The page's styles and scripts came from the host's static view, quietly.
    assert "Warning" not in host.output()
