"""A host project's own user model: ``people.Person`` (tests/support/people),
signed in by email, whose join tables name their user column ``person_id``.
Served by real uvicorn with Redis, as the host would run it: users are
addressed by email, a group reaches its members, and the stream, the inbox,
the console's recent alerts and ``notify_token`` all work. Also notify.E018,
for a user model that lacks what notify needs.

It has its own SQLite database, so it runs once per test run (with SQLite).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.models import PermissionsMixin
from django.db import models
from django.test.utils import isolate_apps

from notify.accounts import check_user_model
from tests.support import forkserver
from tests.support.servers import (
    ROOT,
    UvicornServer,
    auth,
    manage,
    server_base_env,
)
from tests.support.sse import events

pytestmark = pytest.mark.timeout(120)

SEED = """
from django.contrib.auth.models import Group
from tests.support.people.models import Person
ops = Group.objects.create(name="ops")
Person.objects.create_user("ada@example.com", is_staff=True)
Person.objects.create_user("bob@example.com").groups.add(ops)
Person.objects.create_user("carol@example.com")
"""
# Bob signed in, as Django's login() leaves a session: its key is printed.
SIGN_IN = """
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
from django.contrib.sessions.backends.db import SessionStore
from tests.support.people.models import Person
bob = Person.objects.get(email="bob@example.com")
session = SessionStore()
session[SESSION_KEY] = str(bob.pk)
session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
session[HASH_SESSION_KEY] = bob.get_session_auth_hash()
session.create()
print(session.session_key)
"""


def _secret(output: str) -> str:
    (secret,) = [w for w in output.split() if w.startswith("ntf_")]
    return secret


@pytest.fixture(scope="module")
def people(
    tmp_path_factory: pytest.TempPathFactory, database_backend: str, redis_server: Any
) -> Iterator[tuple[UvicornServer, dict[str, str]]]:
    if database_backend != "sqlite":
        pytest.skip("its own SQLite database: once per test run, with SQLite")
    base = tmp_path_factory.mktemp("people")
    env = server_base_env()
    env.update(
        DJANGO_SETTINGS_MODULE="tests.support.custom_user_settings",
        DATABASE_URL=f"sqlite:///{base / 'people.sqlite3'}",
        # A database of its own in the tests' Redis, which other tests flush.
        REDIS_URL=redis_server.url.rsplit("/", 1)[0] + "/9",
        NOTIFY_PADDING_BYTES="0",
        PYTHONPATH=str(ROOT),
        PYTHONUNBUFFERED="1",
    )
    manage(env, "migrate", "--noinput", "-v", "0")
    manage(env, "shell", "-c", SEED)
    tokens = {
        "ada": _secret(
            manage(env, "notify_token", "create", "ada@example.com", "--publish")
        ),
        "bob": _secret(manage(env, "notify_token", "create", "bob@example.com")),
        "carol": _secret(manage(env, "notify_token", "create", "carol@example.com")),
    }
    tokens["bob-session"] = manage(env, "shell", "-c", SIGN_IN).split()[-1]
    server = UvicornServer(base, env, "people")
    server.start()
    try:
        yield server, tokens
    finally:
        server.stop()


async def _publish(
    client: httpx.AsyncClient, token: str, audience: dict[str, list[str]]
) -> httpx.Response:
    return await client.post(
        "/api/notifications",
        json={"title": f"To {audience}", "audience": audience},
        headers=auth(token),
    )


async def test_users_are_addressed_by_the_models_username_field(
    people: tuple[UvicornServer, dict[str, str]],
) -> None:
    server, tokens = people
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        async with client.stream(
            "GET", "/events/", headers=auth(tokens["bob"])
        ) as response:
            assert response.status_code == 200
            reader = events(response)
            async with asyncio.timeout(10):
                assert (await anext(reader)).event == "ready"
                to_bob = await _publish(
                    client, tokens["ada"], {"users": ["bob@example.com"]}
                )
                assert to_bob.status_code == 201, to_bob.text
                assert to_bob.json()["recipients"] == 1
                to_ops = await _publish(client, tokens["ada"], {"groups": ["ops"]})
                assert to_ops.status_code == 201, to_ops.text
                received = [
                    (await anext(reader)).json()["id"],
                    (await anext(reader)).json()["id"],
                ]
        sent = [to_bob.json()["id"], to_ops.json()["id"]]
        assert received == sent

        unknown = await _publish(client, tokens["ada"], {"users": ["bob"]})
        assert unknown.status_code == 400
        assert unknown.json() == {"errors": {"audience": ["Unknown users: bob."]}}

        inbox = await client.get("/api/notifications", headers=auth(tokens["bob"]))
        assert [n["id"] for n in inbox.json()["results"]] == sent[::-1]
        signed_in = await client.get(
            "/api/notifications",
            headers={"Cookie": f"sessionid={tokens['bob-session']}"},
        )
        assert signed_in.json() == inbox.json()
        other = await client.get("/api/notifications", headers=auth(tokens["carol"]))
        assert other.json()["results"] == []

        recent = await client.get("/api/broadcasts/recent", headers=auth(tokens["ada"]))
        assert recent.status_code == 200, recent.text
        targets = {r["id"]: r["targets"] for r in recent.json()["results"]}
        assert targets == {sent[0]: ["bob@example.com"], sent[1]: ["ops"]}


def test_the_checks_pass_and_tokens_list_by_username(
    people: tuple[UvicornServer, dict[str, str]],
) -> None:
    server, _ = people
    checked = manage(server.env, "check", "--fail-level", "ERROR")
    assert "notify.E018" not in checked
    listed = manage(server.env, "notify_token", "list")
    assert "carol@example.com" in listed


def test_a_user_model_notify_cannot_serve_stops_the_start(
    tmp_path: Path, database_backend: str
) -> None:
    if database_backend != "sqlite":
        pytest.skip("once per test run, with SQLite")
    env = server_base_env() | {
        "DJANGO_SETTINGS_MODULE": "tests.support.member_settings",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'members.sqlite3'}",
        "PYTHONPATH": str(ROOT),
    }
    started = forkserver.run([sys.executable, "manage.py", "check"], env, timeout=60)
    assert started.returncode != 0
    assert (
        "ImproperlyConfigured: AUTH_USER_MODEL people.Member lacks an is_active "
        "BooleanField and a groups ManyToManyField to auth.Group (not hidden)"
    ) in started.stderr


@isolate_apps("notify")
def test_a_user_model_without_groups_or_is_active_is_an_error() -> None:
    class Member(AbstractBaseUser):
        email = models.EmailField(unique=True)
        USERNAME_FIELD = "email"

        class Meta:
            app_label = "notify"

    (error,) = check_user_model(Member)
    assert error.id == "notify.E018"
    assert error.obj is Member
    assert "is_active BooleanField" in error.msg
    assert "groups ManyToManyField to auth.Group" in error.msg
    assert "integer primary key" not in error.msg


@isolate_apps("notify")
def test_a_user_model_without_an_integer_key_is_an_error() -> None:
    class Keyed(AbstractBaseUser, PermissionsMixin):
        key = models.UUIDField(primary_key=True)
        is_active = models.BooleanField(default=True)
        USERNAME_FIELD = "key"

        class Meta:
            app_label = "notify"

    (error,) = check_user_model(Keyed)
    assert "lacks an integer primary key:" in error.msg


def test_djangos_user_model_passes() -> None:
    from django.contrib.auth.models import User

    assert check_user_model(User) == []
