"""The pages in real Chromium, through real nginx, against two uvicorn workers
sharing a real Redis: what a person sees and what survives a deploy."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
from django.contrib.auth.models import User
from django.contrib.sessions.backends.db import SessionStore
from playwright.async_api import (
    Browser,
    BrowserContext,
    Dialog,
    Locator,
    Page,
    Response,
    expect,
)

from notify.publishing import persist
from notify.validation import validate
from tests.support.metrics import samples
from tests.support.servers import UvicornServer, auth, manage
from tests.support.stack import Nginx, QuickPBKDF2PasswordHasher, collectstatic
from tests.test_access import Stream, all_ready

pytestmark = pytest.mark.browser

WAIT_MS = 10_000
METRICS_TOKEN = "browser-tests-metrics"
DESKTOP = {"width": 1280, "height": 860}
PHONE = {"width": 390, "height": 844}
XSS = "<img src=x onerror=alert(1)>"

expect.set_options(timeout=WAIT_MS)


@dataclass
class Stack:
    nginx: Nginx
    workers: list[UvicornServer]
    admin_token: str

    @property
    def url(self) -> str:
        return self.nginx.url

    async def publish(self, title: str, **fields: Any) -> int:
        payload = {"audience": "all", "title": title, **fields}
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.post(
                f"{self.url}/api/notifications",
                json=payload,
                headers=auth(self.admin_token),
            )
        assert response.status_code == 201, response.text
        return int(response.json()["id"])

    async def open_streams(self) -> int:
        total = 0
        async with httpx.AsyncClient(timeout=5, headers=auth(METRICS_TOKEN)) as client:
            for worker in self.workers:
                if not worker.running:
                    continue
                text = (await client.get(f"{worker.url}/metrics")).text
                total += int(samples(text)["notify_open_streams"])
        return total

    async def stop_workers(self, *which: int) -> None:
        for index in which:
            await asyncio.to_thread(self.workers[index].stop)

    async def start_workers(self, *which: int) -> None:
        for index in which:
            await asyncio.to_thread(self.workers[index].start)


async def wait_until(predicate: Callable[[], Awaitable[bool]], what: str) -> None:
    try:
        async with asyncio.timeout(WAIT_MS / 1000):
            while not await predicate():  # noqa: ASYNC110 - state in other processes
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"timed out waiting until {what}") from None


@sync_to_async
def session_for(user: User) -> str:
    """A signed-in session, as a successful login would create."""
    session = SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.create()
    return str(session.session_key)


@sync_to_async
def persist_directly(title: str) -> int:
    """Commit a notification from this process, bypassing the servers (and
    Redis): only their replay from the database can deliver it."""
    return int(persist(validate({"audience": "all", "title": title})).notification.id)


@pytest.fixture(autouse=True)
def quick_passwords(settings: Any) -> None:
    path = (
        f"{QuickPBKDF2PasswordHasher.__module__}.{QuickPBKDF2PasswordHasher.__name__}"
    )
    settings.PASSWORD_HASHERS = [path]


@pytest.fixture(scope="session")
def static_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("static")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("NOTIFY_", "REDIS_URL", "DATABASE_URL", "DJANGO_"))
    }
    collectstatic(root, env | {"DJANGO_SETTINGS_MODULE": "project.settings"})
    return root


@pytest.fixture
def stack(
    start_server: Callable[..., UvicornServer],
    redis_url: str,
    tokens: dict[str, str],
    static_root: Path,
    tmp_path: Path,
) -> Iterator[Stack]:
    env = {"REDIS_URL": redis_url, "NOTIFY_METRICS_TOKEN": METRICS_TOKEN}
    with ThreadPoolExecutor(2) as pool:
        workers = list(pool.map(lambda i: start_server(f"web{i}", **env), (1, 2)))
    nginx = Nginx(tmp_path / "nginx", [w.port for w in workers], static_root)
    nginx.start()
    yield Stack(nginx, workers, tokens["admin"])
    nginx.stop()


@dataclass
class Browsing:
    """Opens signed-in pages; remembers what must never happen."""

    browser: Browser
    stack: Stack
    users: dict[str, User]
    contexts: list[BrowserContext]
    page_errors: list[str]
    dialogs: list[str]

    async def context(
        self, *, base_url: str | None = None, viewport: Any = DESKTOP
    ) -> BrowserContext:
        context = await self.browser.new_context(
            base_url=base_url or self.stack.url, viewport=viewport
        )
        context.set_default_timeout(WAIT_MS)
        self.contexts.append(context)
        return context

    async def page(self, context: BrowserContext) -> Page:
        page = await context.new_page()
        page.on("pageerror", lambda error: self.page_errors.append(str(error)))

        async def dialog(d: Dialog) -> None:
            self.dialogs.append(d.message)
            await d.dismiss()

        page.on("dialog", dialog)
        return page

    async def sign_in(
        self,
        username: str,
        *,
        context: BrowserContext | None = None,
        next_url: str = "/",
    ) -> Page:
        """A page at ``next_url`` in a context that has a session for
        ``username`` (the login form itself is exercised by log_in)."""
        context = context or await self.context()
        session = await session_for(self.users[username])
        # Cookies ignore the port: this one serves the buffering proxy too.
        cookie = {"name": "sessionid", "value": session, "url": self.stack.url}
        await context.add_cookies([cookie])  # type: ignore[list-item]
        page = await self.page(context)
        await page.goto(next_url)
        return page

    async def log_in(self, username: str, *, next_url: str = "/") -> Page:
        """Through the login form, as a person would."""
        page = await self.page(await self.context())
        await page.goto(f"/accounts/login/?next={next_url}")
        await page.fill("#id_username", username)
        await page.fill("#id_password", f"pw-{username}")
        await page.click("button[type=submit]")
        await page.wait_for_url(re.compile(re.escape(next_url) + "$"))
        return page

    async def inbox(self, username: str, **kwargs: Any) -> Page:
        page = await self.sign_in(username, **kwargs)
        await expect(connection(page)).to_have_attribute("data-status", "live")
        return page


@pytest.fixture
async def browsing(
    browser: Browser, stack: Stack, users: dict[str, User]
) -> AsyncIterator[Browsing]:
    session = Browsing(browser, stack, users, [], [], [])
    yield session
    for context in session.contexts:
        await context.close()
    assert session.page_errors == []
    assert session.dialogs == []


def connection(page: Page) -> Locator:
    return page.locator("#connection")


def note(page: Page, notification_id: int) -> Locator:
    return page.locator(f'#notes .note[data-id="{notification_id}"]')


async def _publish_outage(stack: Stack) -> int:
    return await stack.publish(
        "Payment service is down",
        body="Checkout fails for all customers. The on-call engineer is on it.",
        level="critical",
        url="/status",
    )


@pytest.mark.timing
async def test_published_notification_shows_in_inbox_and_as_toast_within_a_second(
    browsing, stack
):
    page = await browsing.inbox("alice")
    await expect(connection(page)).to_have_attribute("data-transport", "stream")
    await expect(page.locator("#empty")).to_be_visible()

    sent = await _publish_outage(stack)

    item = note(page, sent)
    await expect(item).to_be_visible(timeout=1000)
    await expect(page.locator(f'.toast[data-id="{sent}"]')).to_be_visible(timeout=1000)
    await expect(item).to_have_class(re.compile(r"\bnote--critical\b"))
    await expect(item.locator(".note__title a")).to_have_attribute("href", "/status")
    await expect(page.locator("#unread-count")).to_have_text("1")
    await expect(page.locator("#announcer")).to_contain_text("Payment service is down")
    await expect(page).to_have_title(re.compile(r"^\(1\) Inbox"))


async def test_the_inbox_counts_marks_read_and_fits_a_phone(browsing, stack, artifacts):
    page = await browsing.inbox("alice")
    await expect(connection(page)).to_have_attribute("data-transport", "stream")
    sent = await _publish_outage(stack)
    await expect(note(page, sent)).to_be_visible()
    await expect(page.locator("#unread-count")).to_have_text("1")

    for title, body, level in [
        ("New teammate", "Say hello to Carol, who joins the platform team.", "info"),
        ("Disk space low on db-2", "Only 8% left on /var/lib/postgresql.", "warning"),
        ("Deploy finished", "Version 2.4 is live on every server.", "success"),
    ]:
        last = await stack.publish(title, body=body, level=level)
    await expect(note(page, last)).to_be_visible()
    await expect(page.locator("#unread-count")).to_have_text("4")
    await note(page, sent).locator(".note__read").click()
    await expect(page.locator("#unread-count")).to_have_text("3")
    await expect(note(page, sent)).to_have_attribute("data-read", "true")
    await page.screenshot(path=artifacts / "inbox.png")

    phone = await browsing.context(viewport=PHONE)
    small = await browsing.inbox("alice", context=phone)
    await expect(small.locator("#notes .note")).to_have_count(4)
    await small.screenshot(path=artifacts / "inbox-phone.png", full_page=True)


def _record_streams(page: Page) -> list[str]:
    urls: list[str] = []
    page.on(
        "request",
        lambda r: urls.append(r.url) if r.resource_type == "eventsource" else None,
    )
    return urls


def _refused_stream(response: Response) -> bool:
    return bool("/events/" in response.url and response.status == 502)


async def test_page_recovers_from_worker_restarts_and_shows_missed_notifications_once(
    browsing, stack
):
    page = await browsing.inbox("alice")
    streams = _record_streams(page)
    sent = [await stack.publish("Before the deploy")]
    await expect(note(page, sent[0])).to_be_visible()

    await stack.stop_workers(0)
    sent.append(await stack.publish("One worker is down"))
    await expect(note(page, sent[1])).to_be_visible()

    # Down for good: the browser's own reconnect gets a 502 from nginx and
    # the EventSource gives up.
    async with page.expect_response(_refused_stream):
        await stack.stop_workers(1)
    await expect(connection(page)).to_have_attribute("data-status", "reconnecting")
    sent.append(await persist_directly("Sent while all were down"))
    sent.append(await persist_directly("And one more"))
    await stack.start_workers(0, 1)

    await expect(connection(page)).to_have_attribute("data-status", "live")
    for notification_id in sent:
        await expect(note(page, notification_id)).to_have_count(1)
    await expect(page.locator("#notes .note")).to_have_count(len(sent))
    await expect(page.locator("#unread-count")).to_have_text(str(len(sent)))
    # The browser gave up on the 502s; the client opened a new stream itself,
    # from its own cursor.
    assert any(f"last_event_id={sent[1]}" in url for url in streams), streams


async def test_tabs_share_one_connection_and_the_next_tab_takes_over(
    browsing: Browsing, stack: Stack
) -> None:
    context = await browsing.context()
    first = await browsing.inbox("alice", context=context)
    await expect(connection(first)).to_have_attribute("data-role", "leader")
    second = await browsing.page(context)
    await second.goto("/")
    await expect(connection(second)).to_have_attribute("data-role", "follower")
    await expect(connection(second)).to_have_attribute("data-status", "live")

    async def one_stream() -> bool:
        return await stack.open_streams() == 1

    await wait_until(one_stream, "one stream is open")
    shared = await stack.publish("Seen by both tabs")
    await expect(note(first, shared)).to_be_visible()
    await expect(note(second, shared)).to_be_visible()
    assert await stack.open_streams() == 1

    await first.close()
    await expect(connection(second)).to_have_attribute("data-role", "leader")
    await expect(connection(second)).to_have_attribute("data-status", "live")
    after = await stack.publish("After the first tab closed")
    await expect(note(second, after)).to_be_visible()
    await expect(second.locator("#notes .note")).to_have_count(2)
    await wait_until(one_stream, "one stream is open again")


async def test_behind_a_buffering_proxy_the_client_long_polls_and_misses_nothing(
    browsing, stack
):
    context = await browsing.context(base_url=stack.nginx.buffered_url)
    page = await browsing.sign_in("alice", context=context)
    await expect(connection(page)).to_have_attribute("data-transport", "poll")
    await expect(connection(page)).to_have_attribute("data-status", "live")
    await expect(page.locator("#connection-label")).to_have_text("Live · polling")

    sent = [await stack.publish(f"Through the proxy {i}") for i in range(3)]
    for notification_id in sent:
        await expect(note(page, notification_id)).to_have_count(1)
    await expect(page.locator("#notes .note")).to_have_count(3)


async def test_marking_read_in_one_tab_updates_the_other_tab_and_device(
    browsing, stack
):
    first_id = await stack.publish("First")
    second_id = await stack.publish("Second")
    laptop = await browsing.context()
    tab = await browsing.inbox("alice", context=laptop)
    other_tab = await browsing.page(laptop)
    await other_tab.goto("/")
    phone = await browsing.inbox(
        "alice", context=await browsing.context(viewport=PHONE)
    )
    for page in (tab, other_tab, phone):
        await expect(page.locator("#unread-count")).to_have_text("2")

    await note(tab, first_id).locator(".note__read").click()
    for page in (other_tab, phone):
        await expect(page.locator("#unread-count")).to_have_text("1")
        await expect(note(page, first_id)).to_have_attribute("data-read", "true")
        await expect(note(page, second_id)).to_have_attribute("data-read", "false")

    await other_tab.click("#mark-all")
    for page in (tab, phone):
        await expect(page.locator("#unread-badge")).to_be_hidden()
        await expect(note(page, second_id)).to_have_attribute("data-read", "true")
        await expect(page.locator("#mark-all")).to_be_disabled()


async def test_staff_console_broadcast_reaches_users_and_is_closed_to_others(
    browsing, stack, artifacts
):
    alice = await browsing.inbox("alice")
    denied = await alice.context.new_page()
    response = await denied.goto("/broadcast/")
    assert response is not None and response.status == 403
    await expect(denied.locator("h1")).to_have_text("This page is not for your account")
    assert (await denied.request.get("/api/broadcasts/recent")).status == 403
    await denied.close()

    console = await browsing.log_in("admin", next_url="/broadcast/")
    await console.fill("#title", "Database maintenance at 22:00 UTC")
    await console.fill(
        "#body", "Writes pause for about five minutes. Reads keep working."
    )
    await console.check('input[name="level"][value="warning"]')
    preview = console.locator("#preview")
    await expect(preview.locator(".note__title")).to_have_text(
        "Database maintenance at 22:00 UTC"
    )
    await expect(preview.locator(".toast")).to_have_class(re.compile(r"toast--warning"))
    await console.click("#send")
    await expect(console.locator("#send-result")).to_have_text(
        "Sent “Database maintenance at 22:00 UTC” to 4 people."
    )

    received = alice.locator("#notes .note").first
    await expect(received.locator(".note__title")).to_have_text(
        "Database maintenance at 22:00 UTC"
    )
    await expect(received).to_have_attribute("data-level", "warning")
    row = console.locator("#recent .alert-row").first
    await expect(row.locator(".alert-row__title")).to_have_text(
        "Database maintenance at 22:00 UTC"
    )
    # Alice has the inbox open; nobody else has.
    await expect(row.locator(".reach")).to_have_text("1 of 4 connected")

    await console.check('input[name="audience"][value="groups"]')
    await console.fill("#targets", "ops, nobody-here")
    await console.fill("#title", "On-call handover at 09:00")
    await console.click("#send")
    await expect(console.locator("#audience-error")).to_contain_text("nobody-here")
    await console.fill("#targets", "ops")
    await console.fill("#body", "Bob takes over the pager from Dave.")
    await console.check('input[name="level"][value="info"]')
    await console.click("#send")
    await expect(console.locator("#send-result")).to_have_text(
        "Sent “On-call handover at 09:00” to 1 person."
    )
    await expect(row.locator(".alert-row__meta")).to_contain_text("Groups: ops")
    await expect(row.locator(".reach")).to_have_text("0 of 1 connected")
    await expect(alice.locator("#notes .note")).to_have_count(1)

    await console.fill("#title", "Release 2.5 is rolling out")
    await console.fill("#body", "Expect short pauses on the dashboard until 15:30.")
    await console.check('input[name="level"][value="success"]')
    await console.check('input[name="audience"][value="all"]')
    await console.screenshot(path=artifacts / "console.png", full_page=True)


async def test_markup_in_a_title_is_shown_as_text(browsing, stack):
    page = await browsing.inbox("alice")
    body = "<script>alert(2)</script><b>bold?</b>"
    sent = await stack.publish(XSS, body=body)
    await expect(note(page, sent).locator(".note__title")).to_have_text(XSS)
    toast = page.locator(f'.toast[data-id="{sent}"]')
    await expect(toast.locator(".note__title")).to_have_text(XSS)
    await expect(note(page, sent).locator(".note__body")).to_have_text(body)
    await page.reload()
    await expect(note(page, sent).locator(".note__title")).to_have_text(XSS)
    await expect(page.locator("img[src='x'], #notes b, #notes script")).to_have_count(0)
    # The browsing fixture asserts at teardown that no dialog opened.


COMPAT_PAGE = """<!doctype html>
<title>django-eventstream client</title>
<ul id="received"></ul>
<script src="/compat/reconnecting-eventsource.js"></script>
<script>
  const source = new ReconnectingEventSource("/events/", {max_retry_time: 1000});
  source.addEventListener("notification", (event) => {
    const item = document.createElement("li");
    item.dataset.id = JSON.parse(event.data).id;
    document.getElementById("received").append(item);
  });
  source.addEventListener("ready", () => { document.body.dataset.ready = "yes"; });
</script>
"""


def _bundled_client() -> str:
    # Located without importing the package, which reads Django settings.
    spec = importlib.util.find_spec("django_eventstream")
    assert spec is not None and spec.submodule_search_locations
    package = Path(next(iter(spec.submodule_search_locations)))
    script = package / "static" / "django_eventstream" / "reconnecting-eventsource.js"
    return script.read_text()


async def test_django_eventstream_client_receives_and_resumes_with_its_cursor(
    browsing, stack
):
    script = _bundled_client()
    page = await browsing.sign_in("alice")
    await page.route(
        "**/compat/",
        lambda route: route.fulfill(content_type="text/html", body=COMPAT_PAGE),
    )
    await page.route(
        "**/compat/reconnecting-eventsource.js",
        lambda route: route.fulfill(content_type="application/javascript", body=script),
    )
    streams = _record_streams(page)
    await page.goto("/compat/")
    await expect(page.locator("body")).to_have_attribute("data-ready", "yes")
    first = await stack.publish("Seen by django-eventstream's client")
    await expect(page.locator(f'#received li[data-id="{first}"]')).to_have_count(1)

    async with page.expect_response(_refused_stream):
        await stack.stop_workers(0, 1)
    missed = await persist_directly("Published while the servers were away")
    await stack.start_workers(0, 1)

    await expect(page.locator(f'#received li[data-id="{missed}"]')).to_have_count(1)
    await expect(page.locator("#received li")).to_have_count(2)
    assert any(f"lastEventId={first}" in url for url in streams), streams


async def test_a_revoked_session_signs_the_page_out(browsing, stack, server_env):
    page = await browsing.inbox("alice")
    cookies = await page.context.cookies()
    key = next(c["value"] for c in cookies if c["name"] == "sessionid")
    env = server_env | {"REDIS_URL": stack.workers[0].env["REDIS_URL"]}
    code = "from django.contrib.sessions.backends.db import SessionStore\n" + (
        f"SessionStore({key!r}).flush()"
    )
    await asyncio.to_thread(manage, env, "shell", "-c", code)
    await page.wait_for_url(re.compile(r"/accounts/login/\?next="), timeout=5000)


async def test_over_the_cap_the_page_backs_off_and_all_its_tabs_share_one_slot(
    browsing: Browsing, stack: Stack
) -> None:
    session = await session_for(browsing.users["alice"])
    cookies = {"sessionid": session}
    # 20 streams (the default cap) held by another program of alice's.
    held = [Stream(stack.url, cookies=cookies) for _ in range(20)]
    await all_ready(held, within=10)
    assert {s.status for s in held} == {200}
    async with (
        httpx.AsyncClient(timeout=10, cookies=cookies) as client,
        client.stream("GET", stack.url + "/events/") as refused,
    ):
        assert refused.status_code == 429

    context = await browsing.context()
    await context.add_cookies(
        [{"name": "sessionid", "value": session, "url": stack.url}]
    )
    page = await browsing.page(context)
    asked: list[int] = []
    page.on(
        "response",
        lambda r: asked.append(r.status) if "/events/" in r.url else None,
    )
    await page.goto("/")
    await expect(connection(page)).to_have_attribute("data-status", "reconnecting")
    await asyncio.sleep(4)
    # Refused (429), then waiting out Retry-After: a handful of requests.
    assert 429 in asked
    assert len(asked) <= 6, asked

    # Three more tabs of the same browser: still one connection between them.
    tabs = [page]
    for _ in range(3):
        tab = await browsing.page(context)
        await tab.goto("/")
        tabs.append(tab)
    for stream in held[:19]:
        await stream.close()
    for tab in tabs:
        await expect(connection(tab)).to_have_attribute("data-status", "live")

    async def two_streams() -> bool:
        return await stack.open_streams() == 2  # the one left held + the tabs'

    await wait_until(two_streams, "the tabs share one stream")
    async with httpx.AsyncClient(timeout=10, cookies=cookies) as client:
        extra = [Stream(stack.url, cookies=cookies) for _ in range(18)]
        await all_ready(extra, within=10)
        assert {s.status for s in extra} == {200}  # 20 in all: the cap
        async with client.stream("GET", stack.url + "/events/") as refused:
            assert refused.status_code == 429
    for stream in [*extra, held[19]]:
        await stream.close()
