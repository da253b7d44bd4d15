"""Django's middleware with its I/O-free hooks on the event loop.

Each test takes a path where a hook *does* reach the database (a session that
changed, messages read or added, a CSRF secret kept in the session), through
Django's async test client, so the middleware runs in async mode. Run on the
event loop, any of them would fail with ``SynchronousOnlyOperation``.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import Group
from django.test import AsyncClient

from tests.support.api import Client

pytestmark = pytest.mark.django_db(transaction=True)


def _csrf_token(html: str) -> str:
    found = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html)
    assert found, "no CSRF token in the form"
    return found.group(1)


async def _log_in(client: AsyncClient, username: str) -> None:
    form = await client.get("/accounts/login/")
    assert form.status_code == 200
    response = await client.post(
        "/accounts/login/",
        {
            "username": username,
            "password": f"pw-{username}",
            "csrfmiddlewaretoken": _csrf_token(form.content.decode()),
        },
    )
    assert response.status_code == 302, response.content[:500]


@pytest.mark.parametrize("csrf_in_session", [False, True])
async def test_logging_in_saves_the_session(users, settings, csrf_in_session):
    settings.CSRF_USE_SESSIONS = csrf_in_session
    client = AsyncClient(enforce_csrf_checks=True)
    await _log_in(client, "alice")
    page = await client.get("/")
    assert page.status_code == 200
    assert "alice" in page.content.decode()
    # A later request finds the session in the database.
    assert (await client.get("/api/notifications")).status_code == 200


async def test_a_form_post_without_its_csrf_token_is_refused(users):
    client = AsyncClient(enforce_csrf_checks=True)
    response = await client.post(
        "/accounts/login/", {"username": "alice", "password": "pw-alice"}
    )
    assert response.status_code == 403


async def test_messages_added_then_read_survive_between_requests(users):
    client = AsyncClient(enforce_csrf_checks=True)
    await _log_in(client, "admin")
    form = await client.get("/admin/auth/group/add/")
    response = await client.post(
        "/admin/auth/group/add/",
        {
            "name": "night-shift",
            "csrfmiddlewaretoken": _csrf_token(form.content.decode()),
        },
    )
    assert response.status_code == 302
    assert await Group.objects.filter(name="night-shift").aexists()
    # A request that never looks at messages leaves them where they are.
    assert (await client.get("/api/notifications")).status_code == 200
    shown = await client.get(response["Location"])
    assert "night-shift" in shown.content.decode()
    assert "was added successfully" in shown.content.decode()
    # Read once, the message is gone.
    again = await client.get(response["Location"])
    assert "was added successfully" not in again.content.decode()


async def test_bearer_requests_run_no_middleware_hook_in_a_thread(tokens, monkeypatch):
    hooks_in_threads: list[Any] = []
    original = sync_to_async

    def counting(func: Any, *args: Any, **kwargs: Any) -> Any:
        hooks_in_threads.append(func)
        return original(func, *args, **kwargs)

    monkeypatch.setattr("notify.middleware.sync_to_async", counting)
    response = await Client(tokens["alice"]).get("/api/notifications")
    assert response.status_code == 200
    assert hooks_in_threads == []


async def test_settings_use_the_on_loop_middleware():
    from django.conf import settings

    loaded = await sync_to_async(lambda: list(settings.MIDDLEWARE))()
    assert all(path.startswith("notify.middleware.") for path in loaded)
