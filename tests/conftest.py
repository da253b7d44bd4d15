from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Group, User

from notify.broker import forget_broker
from notify.tokens import create_token
from tests.support.api import Client
from tests.support.servers import RedisServer, UvicornServer, auth  # noqa: F401

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--redis-url",
        default=os.environ.get("NOTIFY_TEST_REDIS_URL", ""),
        help="use this Redis instead of starting redis-server",
    )


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("servers")


@pytest.fixture(scope="session")
def test_db_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("db") / "notify-test.sqlite3"


@pytest.fixture(scope="session")
def django_db_modify_db_settings(test_db_path: Path) -> None:
    # A file, not in-memory SQLite: uvicorn processes share it with the tests.
    from django.conf import settings

    settings.DATABASES["default"]["TEST"]["NAME"] = str(test_db_path)


@pytest.fixture
def fast_password_hashing(settings: Any) -> None:
    """For tests that never log in with a password: hashing four is slow."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
async def close_broker(settings: Any) -> AsyncIterator[None]:
    """Close this loop's broker (and its resync task) before the loop ends.

    Depends on ``settings`` so that it runs before the settings are restored,
    which would drop the cached broker without closing it."""
    yield
    broker = forget_broker()
    if broker is not None:
        async with asyncio.timeout(10):
            await broker.aclose()


@pytest.fixture(scope="session")
def redis_server(workdir: Path) -> Iterator[RedisServer]:
    server = RedisServer(workdir)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer, request: pytest.FixtureRequest) -> str:
    import redis

    url = request.config.getoption("--redis-url") or redis_server.url
    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()
    return url


@pytest.fixture
def server_env(test_db_path: Path) -> dict[str, str]:
    """Environment for a uvicorn server sharing the test database."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("NOTIFY_", "REDIS_URL", "DATABASE_URL", "DJANGO_"))
    }
    env.update(
        DATABASE_URL=f"sqlite:///{test_db_path}",
        DJANGO_SETTINGS_MODULE="project.settings",
        NOTIFY_HEARTBEAT_SECONDS="2",
        NOTIFY_RESYNC_SECONDS="1",
        NOTIFY_PADDING_BYTES="0",
        PYTHONPATH=str(Path(__file__).resolve().parents[1]),
        PYTHONUNBUFFERED="1",
    )
    return env


@pytest.fixture
def start_server(
    workdir: Path, server_env: dict[str, str], transactional_db: None
) -> Iterator[Callable[..., UvicornServer]]:
    """Start uvicorn servers (``start_server(REDIS_URL=..., name=...)``);
    all are stopped at teardown."""
    started: list[UvicornServer] = []

    def start(name: str = "app", **env: str) -> UvicornServer:
        server = UvicornServer(workdir, server_env | env, name)
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def password_hashes() -> dict[str, str]:
    """Real (PBKDF2) hashes of the test passwords, computed once per session:
    the uvicorn servers verify them at login."""
    from django.contrib.auth.hashers import make_password

    names = ("admin", "alice", "bob", "carol")
    return {name: make_password(f"pw-{name}") for name in names}


@pytest.fixture
def users(transactional_db: None, password_hashes: dict[str, str]) -> dict[str, User]:
    """admin (superuser), alice, bob (in group "ops"), carol; password "pw-<name>"."""
    ops = Group.objects.create(name="ops")
    Group.objects.create(name="sales")
    made = {
        name: User.objects.create(
            username=name,
            email=f"{name}@example.com",
            password=password_hashes[name],
            is_staff=name == "admin",
            is_superuser=name == "admin",
        )
        for name in password_hashes
    }
    made["bob"].groups.add(ops)
    return made


@pytest.fixture
def tokens(users: dict[str, User]) -> dict[str, str]:
    """A bearer token per user; the admin's may publish."""
    return {
        name: create_token(user, can_publish=(name == "admin"))[1]
        for name, user in users.items()
    }


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture
def client_for(tokens: dict[str, str]) -> Callable[[str], Client]:
    def make(name: str) -> Client:
        return Client(tokens[name])

    return make


@pytest.fixture
def admin(client_for: Callable[[str], Client]) -> Client:
    return client_for("admin")
