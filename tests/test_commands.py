"""The management commands, through ``call_command`` and as real processes
(``manage.py``), for their output and exit codes."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import Group, User
from django.core.management import CommandError, call_command
from django.test import AsyncClient
from django.utils import timezone

from notify.models import APIToken, Notification, ReadMark, RetentionMark
from tests.support import forkserver


def run(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return forkserver.run([sys.executable, "manage.py", *args], env, timeout=60)


async def inbox_status(token: str) -> int:
    headers = {"Authorization": f"Bearer {token}"}
    response = await AsyncClient().get("/api/notifications", headers=headers)
    return response.status_code


async def publish_status(token: str) -> int:
    response = await AsyncClient().post(
        "/api/notifications",
        {"audience": "all", "title": "From a token"},
        content_type="application/json",
        headers={"Authorization": f"Bearer {token}"},
    )
    return response.status_code


@pytest.fixture
def users(transactional_db: None) -> dict[str, User]:
    # Committed (manage.py subprocesses read them) and without passwords, whose
    # hashing would dominate these tests' run time.
    made = {
        name: User.objects.create(username=name, is_staff=name == "admin")
        for name in ("admin", "alice", "bob", "carol")
    }
    made["bob"].groups.add(Group.objects.create(name="ops"))
    return made


# notify_send


@pytest.mark.parametrize(
    ("target", "audience", "addressed"),
    [
        (["--all"], "all", ([], [])),
        (["--user", "alice", "--user", "carol"], "user", (["alice", "carol"], [])),
        (["--group", "ops"], "group", ([], ["ops"])),
    ],
)
def test_notify_send_prints_the_new_id(users, target, audience, addressed):
    out, _ = run(
        "notify_send", *target, "--title", "Deploy", "--body", "at 5", "--level",
        "warning", "--url", "/deploys/5", "--expires-in", "3600",
    )  # fmt: skip
    n = Notification.objects.get()
    assert out == f"{n.id}\n"
    assert (n.audience, n.title, n.body, n.level, n.url) == (
        audience, "Deploy", "at 5", "warning", "/deploys/5",
    )  # fmt: skip
    expected_users, expected_groups = addressed
    assert sorted(n.users.values_list("username", flat=True)) == expected_users
    assert sorted(n.groups.values_list("name", flat=True)) == expected_groups
    assert n.expires_at is not None
    remaining = (n.expires_at - timezone.now()).total_seconds()
    assert 3500 < remaining <= 3600


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--user", "nobody", "--title", "x"], 1, "Unknown users: nobody"),
        (["--group", "nowhere", "--title", "x"], 1, "Unknown groups: nowhere"),
        (["--title", "x"], 2, "one of the arguments --all --user --group is required"),
        (["--all", "--user", "alice", "--title", "x"], 2, "not allowed with"),
        (["--all", "--title", "  "], 1, "title: This field is required"),
        (["--all", "--title", "x", "--level", "urgent"], 2, "invalid choice: 'urgent'"),
        (["--all", "--title", "x", "--url", "//evil.example"], 1, "url:"),
        (["--all", "--title", "x", "--expires-in", "0"], 1, "--expires-in"),
        (["--all", "--title", "x", "--expires-in", "-5"], 1, "--expires-in"),
        (["--all", "--title", "x", "--expires-in", "nan"], 1, "--expires-in"),
        (["--all", "--title", "x", "--expires-in", "inf"], 1, "--expires-in: inf is"),
        (["--all", "--title", "x", "--expires-in", "soon"], 2, "invalid float value"),
    ],
)
def test_notify_send_bad_arguments_exit_non_zero_with_a_message(
    users, server_env, args, code, message
):
    result = manage(server_env, "notify_send", *args)
    assert result.returncode == code, result.stderr
    assert message in result.stderr
    assert result.stdout == ""
    assert not Notification.objects.exists()


# notify_token


async def test_created_token_authenticates_until_revoked(users):
    out, err = await sync_to_async(run)("notify_token", "create", "alice")
    secret = out.strip()
    assert out == secret + "\n"  # only the token on stdout, for scripts
    assert secret.startswith("ntf_")
    assert "shown only now" in err

    assert await inbox_status(secret) == 200
    assert await publish_status(secret) == 403  # not created with --publish

    name = (await APIToken.objects.aget(user__username="alice")).name
    out, _ = await sync_to_async(run)("notify_token", "revoke", name)
    assert name in out
    assert await inbox_status(secret) == 401


async def test_publish_token_may_publish(users):
    out, _ = await sync_to_async(run)(
        "notify_token", "create", "carol", "--publish", "--name", "ci"
    )
    token = await APIToken.objects.aget(name="ci")
    assert token.can_publish
    assert await publish_status(out.strip()) == 201


def test_token_list_shows_tokens_but_never_secrets(users):
    reader, _ = run("notify_token", "create", "alice", "--name", "alice-phone")
    writer, _ = run("notify_token", "create", "admin", "--publish", "--name", "deploy")
    out, _ = run("notify_token", "list")
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "USER", "PUBLISH", "CREATED", "(UTC)"]
    assert lines[1].split()[:3] == ["alice-phone", "alice", "no"]
    assert lines[2].split()[:3] == ["deploy", "admin", "yes"]
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$", lines[2])
    assert reader.strip() not in out
    assert writer.strip() not in out


def test_token_list_without_tokens_says_so(db):
    out, _ = run("notify_token", "list")
    assert out == "No API tokens.\n"


def test_token_names_default_to_the_username(users):
    run("notify_token", "create", "bob")
    run("notify_token", "create", "bob")
    names = list(APIToken.objects.values_list("name", flat=True))
    assert len(set(names)) == 2
    assert all(name.startswith("bob-") for name in names)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["create", "nobody"], "unknown user 'nobody'"),
        (
            ["create", "alice", "--name", "taken"],
            "a token named 'taken' already exists",
        ),
        (["create", "alice", "--name", " "], "--name"),
        (["revoke", "missing"], "no token named 'missing'"),
    ],
)
def test_token_bad_arguments_raise_command_error(users, args, message):
    run("notify_token", "create", "bob", "--name", "taken")
    with pytest.raises(CommandError, match=re.escape(message)):
        run("notify_token", *args)
    assert list(APIToken.objects.values_list("name", flat=True)) == ["taken"]


def test_token_command_exits_non_zero_as_a_process(users, server_env):
    created = manage(server_env, "notify_token", "create", "alice", "--name", "cli")
    assert created.returncode == 0, created.stderr
    assert created.stdout.strip().startswith("ntf_")
    duplicate = manage(server_env, "notify_token", "create", "alice", "--name", "cli")
    assert duplicate.returncode == 1
    assert "a token named 'cli' already exists" in duplicate.stderr
    unknown = manage(server_env, "notify_token", "revoke", "nope")
    assert unknown.returncode == 1
    assert "no token named 'nope'" in unknown.stderr
    missing_action = manage(server_env, "notify_token")
    assert missing_action.returncode != 0
    assert APIToken.objects.count() == 1


# notify_demo


def _printed(out: str) -> tuple[dict[str, str], str, str]:
    passwords = dict(re.findall(r"^ {4}(admin|alice|bob) +(\S+)", out, re.MULTILINE))
    stream = re.search(r"Bearer (ntf_\S+?)' \S+/events/$", out, re.MULTILINE)
    publish = re.search(r"Bearer (ntf_\S+?)' .*/api/notifications$", out, re.MULTILINE)
    assert stream and publish, out
    return passwords, stream.group(1), publish.group(1)


async def test_demo_is_idempotent_and_prints_working_credentials(
    transactional_db, fast_password_hashing
):
    # The demo's six passwords and the twelve checks of them, hashed with
    # PBKDF2's million rounds, took most of this test's 5 to 16 seconds.
    first, _ = await sync_to_async(run)("notify_demo")
    second, _ = await sync_to_async(run)("notify_demo", "--url", "http://demo.test/")
    old_passwords, old_stream, old_publish = _printed(first)
    passwords, stream, publish = _printed(second)
    assert "http://demo.test/accounts/login/" in second
    assert "curl -N -H" in second

    @sync_to_async
    def state() -> tuple[list[str], list[str], list[tuple[str, str, bool]]]:
        users = list(
            User.objects.order_by("username").values_list("username", flat=True)
        )
        ops = list(
            Group.objects.get(name="ops").user_set.values_list("username", flat=True)
        )
        tokens = list(
            APIToken.objects.order_by("name").values_list(
                "name", "user__username", "can_publish"
            )
        )
        for name in ("admin", "alice", "bob"):
            user = User.objects.get(username=name)
            assert user.check_password(passwords[name]), name
            assert not user.check_password(old_passwords[name]), name
            assert user.is_staff == (name == "admin")
        return users, ops, tokens

    users, ops, tokens = await state()
    assert users == ["admin", "alice", "bob"]
    assert ops == ["bob"]
    assert tokens == [
        ("demo-admin-publish", "admin", True),
        ("demo-alice-stream", "alice", False),
    ]
    assert await inbox_status(stream) == 200
    assert await inbox_status(old_stream) == 401
    assert await publish_status(publish) == 201
    assert await publish_status(old_publish) == 401


# notify_prune


def test_prune_removes_notifications_past_retention_and_says_how_many(users):
    old = timezone.now() - timedelta(days=31)
    for title in ("old one", "old two"):
        n = Notification.objects.create(title=title, audience="user", created_at=old)
        n.users.set([users["alice"]])
        ReadMark.objects.create(user=users["alice"], notification=n)
    Notification.objects.create(title="recent", audience="all")

    out, _ = run("notify_prune")
    assert out == "Removed 2 notifications older than 30 days.\n"
    assert list(Notification.objects.values_list("title", flat=True)) == ["recent"]
    assert RetentionMark.objects.get().pruned_through == n.id

    out, _ = run("notify_prune")
    assert out == "Removed 0 notifications older than 30 days.\n"
