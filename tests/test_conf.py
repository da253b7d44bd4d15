"""Settings: bad environment values stop the server at start, the system
checks report bad ``NOTIFY_*`` values, and ``notify.conf`` follows
``override_settings``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.core.checks import CheckMessage, Tags, run_checks
from django.test import override_settings

from notify.checks import check_settings
from notify.conf import Rate, conf
from tests.support import forkserver
from tests.support.servers import ROOT, auth

BAD_ENV = [
    ("NOTIFY_HEARTBEAT_SECONDS", "abc"),
    ("NOTIFY_HEARTBEAT_SECONDS", "0.5"),
    ("NOTIFY_RETRY_MS", "-5"),
    ("NOTIFY_PUBLISH_RATE", "5/d"),
    ("NOTIFY_PUBLISH_RATE", "0/s"),
    ("NOTIFY_PADDING_BYTES", "-1"),
    ("NOTIFY_RETENTION_DAYS", "0"),
    ("NOTIFY_QUEUE_SIZE", "many"),
    ("REDIS_URL", "http://x"),
    ("NOTIFY_REDIS_PREFIX", " "),
    ("DEBUG", "maybe"),
    ("DATABASE_URL", "nosuchdb://x"),
    ("DATABASE_URL", "mysql://notify:secret@127.0.0.1:3306/notify"),
    ("DATABASE_URL", "oracle://notify:secret@127.0.0.1:1521/notify"),
    ("DATABASE_URL", "postgis://notify@127.0.0.1/notify"),
    ("ALLOWED_HOSTS", " , "),
    ("CSRF_TRUSTED_ORIGINS", "notify.example.com"),
    ("SESSION_COOKIE_SECURE", "maybe"),
    ("CSRF_COOKIE_SECURE", "2"),
    ("SECURE_SSL_REDIRECT", "sure"),
    ("SECURE_HSTS_SECONDS", "-1"),
    ("SECURE_HSTS_SECONDS", "a year"),
    ("SECURE_HSTS_INCLUDE_SUBDOMAINS", "maybe"),
    ("SECURE_HSTS_PRELOAD", "maybe"),
    ("SECURE_PROXY_SSL_HEADER", "X Forwarded Proto"),
]


COMMANDS = {
    "asgi": [sys.executable, "-c", "import project.asgi"],
    "check": [sys.executable, "manage.py", "check"],
}


@pytest.fixture
def clean_env(tmp_path: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(
            ("NOTIFY_", "REDIS_URL", "DATABASE_URL", "DJANGO_", "DEBUG")
        )
    }
    env["DATABASE_URL"] = f"sqlite:///{tmp_path / 'conf.sqlite3'}"
    env["PYTHONPATH"] = str(ROOT)
    return env


def run(command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return forkserver.run(COMMANDS[command], env, timeout=60)


@pytest.mark.parametrize("command", COMMANDS)
def test_good_environment_values_load(clean_env, command):
    env = clean_env | {
        "NOTIFY_HEARTBEAT_SECONDS": "7.5",
        "NOTIFY_PUBLISH_RATE": "10/h",
        "NOTIFY_PADDING_BYTES": "0",
        "REDIS_URL": "redis://127.0.0.1:1/0",
        "DEBUG": "off",
    }
    result = run(command, env)
    assert result.returncode == 0, result.stderr


HTTPS_SETTINGS = [
    "SESSION_COOKIE_SECURE",
    "CSRF_COOKIE_SECURE",
    "SECURE_SSL_REDIRECT",
    "SECURE_HSTS_SECONDS",
    "SECURE_HSTS_INCLUDE_SUBDOMAINS",
    "SECURE_HSTS_PRELOAD",
    "SECURE_PROXY_SSL_HEADER",
    "CSRF_TRUSTED_ORIGINS",
]


def _python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return forkserver.run([sys.executable, "-c", code], env, timeout=60)


def _loaded(env: dict[str, str], names: list[str]) -> dict[str, Any]:
    """The settings ``names`` as a process started with ``env`` loads them."""
    code = (
        "import json; from django.conf import settings; "
        f"print(json.dumps({{n: getattr(settings, n) for n in {names!r}}}))"
    )
    result = _python(code, env | {"DJANGO_SETTINGS_MODULE": "project.settings"})
    assert result.returncode == 0, result.stderr
    loaded: dict[str, Any] = json.loads(result.stdout)
    return loaded


def test_https_settings_default_to_plain_http(clean_env):
    assert _loaded(clean_env, HTTPS_SETTINGS) == {
        "SESSION_COOKIE_SECURE": False,
        "CSRF_COOKIE_SECURE": False,
        "SECURE_SSL_REDIRECT": False,
        "SECURE_HSTS_SECONDS": 0,
        "SECURE_HSTS_INCLUDE_SUBDOMAINS": False,
        "SECURE_HSTS_PRELOAD": False,
        "SECURE_PROXY_SSL_HEADER": None,
        "CSRF_TRUSTED_ORIGINS": [],
    }


def test_https_settings_come_from_the_environment(clean_env):
    env = clean_env | {
        "SESSION_COOKIE_SECURE": "true",
        "CSRF_COOKIE_SECURE": "1",
        "SECURE_SSL_REDIRECT": "yes",
        "SECURE_HSTS_SECONDS": "31536000",
        "SECURE_HSTS_INCLUDE_SUBDOMAINS": "on",
        "SECURE_HSTS_PRELOAD": "true",
        "SECURE_PROXY_SSL_HEADER": "X-Forwarded-Proto",
        "CSRF_TRUSTED_ORIGINS": "https://notify.example.com, https://b.example:8443",
    }
    assert _loaded(env, HTTPS_SETTINGS) == {
        "SESSION_COOKIE_SECURE": True,
        "CSRF_COOKIE_SECURE": True,
        "SECURE_SSL_REDIRECT": True,
        "SECURE_HSTS_SECONDS": 31536000,
        "SECURE_HSTS_INCLUDE_SUBDOMAINS": True,
        "SECURE_HSTS_PRELOAD": True,
        "SECURE_PROXY_SSL_HEADER": ["HTTP_X_FORWARDED_PROTO", "https"],
        "CSRF_TRUSTED_ORIGINS": [
            "https://notify.example.com",
            "https://b.example:8443",
        ],
    }
    proxy = clean_env | {"SECURE_PROXY_SSL_HEADER": "X-Scheme=HTTPS"}
    assert _loaded(proxy, ["SECURE_PROXY_SSL_HEADER"]) == {
        "SECURE_PROXY_SSL_HEADER": ["HTTP_X_SCHEME", "HTTPS"]
    }


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize(
    "url", ["postgres://notify:secret@127.0.0.1:1/notify", "postgresql:///notify"]
)
def test_a_postgresql_database_url_loads(clean_env, command, url):
    """Loading the settings does not connect: port 1 has no server."""
    result = run(command, clean_env | {"DATABASE_URL": url})
    assert result.returncode == 0, result.stderr


def test_other_database_backends_are_refused_naming_database_url(clean_env):
    code = "import django; django.setup()"
    for url in ["mysql://notify@127.0.0.1/notify", "mssql://notify@127.0.0.1/n"]:
        result = _python(
            code,
            clean_env
            | {"DATABASE_URL": url, "DJANGO_SETTINGS_MODULE": "project.settings"},
        )
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith(
            "django.core.exceptions.ImproperlyConfigured: DATABASE_URL: "
        )
        assert "SQLite" in last and "PostgreSQL" in last


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize(("key", "value"), BAD_ENV)
def test_a_bad_environment_value_fails_at_start_naming_the_key(
    clean_env, command, key, value
):
    result = run(command, clean_env | {key: value})
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("django.core.exceptions.ImproperlyConfigured: ")
    assert key in last


CHECKED: list[tuple[str, Any, str]] = [
    ("NOTIFY_HEARTBEAT_SECONDS", "abc", "notify.E001"),
    ("NOTIFY_HEARTBEAT_SECONDS", 0, "notify.E001"),
    ("NOTIFY_HEARTBEAT_SECONDS", True, "notify.E001"),
    ("NOTIFY_RETRY_MS", -1, "notify.E002"),
    ("NOTIFY_RETRY_MS", 1.5, "notify.E002"),
    ("NOTIFY_PADDING_BYTES", -1, "notify.E003"),
    ("NOTIFY_PADDING_BYTES", "lots", "notify.E003"),
    ("NOTIFY_RETENTION_DAYS", 0, "notify.E004"),
    ("NOTIFY_PUBLISH_RATE", "5/d", "notify.E005"),
    ("NOTIFY_PUBLISH_RATE", "0/m", "notify.E005"),
    ("NOTIFY_PUBLISH_RATE", 60, "notify.E005"),
    ("NOTIFY_QUEUE_SIZE", 0, "notify.E006"),
    ("NOTIFY_REPLAY_BATCH", 0, "notify.E007"),
    ("NOTIFY_RESYNC_SECONDS", 0, "notify.E008"),
    ("NOTIFY_SYNC_THREADS", 0, "notify.E009"),
    ("NOTIFY_PRUNE_SECONDS", -1, "notify.E013"),
    ("NOTIFY_PRUNE_SECONDS", "hourly", "notify.E013"),
    ("NOTIFY_REDIS_URL", "http://x", "notify.E014"),
    ("NOTIFY_REDIS_URL", None, "notify.E014"),
    ("NOTIFY_REDIS_PREFIX", "", "notify.E015"),
    ("NOTIFY_METRICS_TOKEN", 5, "notify.E016"),
    ("NOTIFY_DRAIN_RATE", -1, "notify.E019"),
    ("NOTIFY_DRAIN_RATE", "fast", "notify.E019"),
    ("NOTIFY_BROKER", "redis", "notify.E010"),
    ("NOTIFY_BROKER", {"BACKEND": "notify.broker.nowhere.Broker"}, "notify.E010"),
    (
        "NOTIFY_BROKER",
        {"BACKEND": "notify.broker.redis.RedisBroker", "OPTIONS": {"bogus": 1}},
        "notify.E010",
    ),
]


def _errors() -> list[CheckMessage]:
    # notify's checks only: the model checks need the database on Django 6.1
    # (a JSONField asks the backend what it supports).
    found = run_checks(tags=[Tags.compatibility])
    return [m for m in found if m.id and m.id.startswith("notify.E")]


def test_the_defaults_pass_the_system_checks():
    assert _errors() == []


@pytest.mark.parametrize(
    ("name", "value", "check_id"),
    CHECKED,
    ids=[f"{c}-{i}" for i, (_, _, c) in enumerate(CHECKED)],
)
def test_a_bad_setting_is_reported_by_the_system_checks(name, value, check_id):
    with override_settings(**{name: value}):
        found = _errors()
    assert [m.id for m in found] == [check_id]
    assert name in found[0].msg
    assert found[0].is_serious()


def test_every_bad_setting_is_reported_at_once():
    with override_settings(NOTIFY_RETRY_MS=-1, NOTIFY_QUEUE_SIZE=0):
        ids = sorted(m.id or "" for m in check_settings() if m.is_serious())
    assert ids == ["notify.E002", "notify.E006"]


def test_conf_follows_override_settings():
    with override_settings(
        NOTIFY_HEARTBEAT_SECONDS="4",
        NOTIFY_PUBLISH_RATE="5/s",
        NOTIFY_PADDING_BYTES=0,
        NOTIFY_METRICS_TOKEN="t",
    ):
        assert conf.heartbeat_seconds == 4.0
        assert conf.publish_rate == Rate(5, 1)
        assert conf.padding_bytes == 0
        assert conf.metrics_token == "t"
    assert conf.padding_bytes == 2048
    assert conf.publish_rate == Rate(60, 60)


def test_the_broker_follows_notify_redis_url(settings):
    settings.NOTIFY_REDIS_URL = ""
    assert conf.broker["BACKEND"] == "notify.broker.memory.MemoryBroker"
    settings.NOTIFY_REDIS_URL = "redis://127.0.0.1:1/0"
    settings.NOTIFY_REDIS_PREFIX = "host:"
    assert conf.broker == {
        "BACKEND": "notify.broker.redis.RedisBroker",
        "OPTIONS": {"url": "redis://127.0.0.1:1/0", "prefix": "host:"},
    }


def test_an_explicit_notify_broker_wins_over_notify_redis_url(settings):
    memory = {"BACKEND": "notify.broker.memory.MemoryBroker", "OPTIONS": {}}
    settings.NOTIFY_BROKER = memory
    settings.NOTIFY_REDIS_URL = "redis://127.0.0.1:1/0"
    assert conf.broker == memory


def test_every_notify_setting_has_a_default_in_the_app(clean_env):
    """With no NOTIFY_* setting at all, the app loads and uses its defaults."""
    code = (
        "import django; from django.conf import settings; settings.configure("
        "INSTALLED_APPS=['django.contrib.auth', 'django.contrib.contenttypes', "
        "'django.contrib.sessions', 'notify'], DATABASES={'default': {'ENGINE': "
        "'django.db.backends.sqlite3', 'NAME': ':memory:'}}, SECRET_KEY='x'); "
        "django.setup(); from notify.conf import SETTINGS, conf; "
        "from django.core.checks import run_checks; "
        "assert [m for m in run_checks() if m.id.startswith('notify.E')] == []; "
        "assert conf.broker['BACKEND'] == 'notify.broker.memory.MemoryBroker'; "
        "print(conf.heartbeat_seconds, conf.padding_bytes, conf.publish_rate)"
    )
    result = _python(code, clean_env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["15.0", "2048", "60/m"]


def test_the_demo_settings_never_import_notify(clean_env):
    code = (
        "import sys, project.settings; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'notify'))"
    )
    result = _python(code, clean_env | {"REDIS_URL": "redis://127.0.0.1:1/0"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_development_key_is_a_warning_outside_debug():
    with override_settings(DEBUG=False):
        assert "notify.W001" in [m.id for m in check_settings()]
    with override_settings(DEBUG=True):
        assert "notify.W001" not in [m.id for m in check_settings()]


# Padding


async def _first_bytes(url: str, token: str, size: int) -> bytes:
    buffer = b""
    async with (
        httpx.AsyncClient(timeout=10) as client,
        client.stream("GET", url + "/events/", headers=auth(token)) as response,
    ):
        assert response.status_code == 200
        async for chunk in response.aiter_raw():
            buffer += chunk
            if len(buffer) >= size:
                break
    return buffer


async def test_zero_padding_starts_the_stream_with_retry(start_server, tokens):
    server = start_server(NOTIFY_PADDING_BYTES="0", NOTIFY_RETRY_MS="1500")
    head = await _first_bytes(server.url, tokens["alice"], 30)
    assert head.startswith(b"retry: 1500\n\nevent: ready\ndata: {")


@pytest.mark.parametrize("size", [2048, 100])
async def test_padding_is_a_comment_of_the_configured_size(start_server, tokens, size):
    server = start_server(NOTIFY_PADDING_BYTES=str(size))
    head = await _first_bytes(server.url, tokens["alice"], size + 30)
    padding, rest = head[:size], head[size:]
    assert padding.startswith(b":")
    assert padding.endswith(b"\n\n")
    assert padding.count(b"\n") == 2
    assert rest.startswith(b"retry: 3000\n\nevent: ready\n")


async def test_the_default_padding_is_2048_bytes(start_server, server_env, tokens):
    server_env.pop("NOTIFY_PADDING_BYTES")
    server = start_server()
    head = await _first_bytes(server.url, tokens["alice"], 2048 + 15)
    assert head[:2048].endswith(b"\n\n") and head[:1] == b":"
    assert head[2048:].startswith(b"retry: 3000\n\n")
