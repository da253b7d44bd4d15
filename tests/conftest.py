from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Group, User
from django.db.backends.base.base import BaseDatabaseWrapper
from playwright.async_api import Browser

from notify.broker import forget_broker
from notify.opening import forget_opener
from notify.tokens import create_token, write_used
from tests.support.api import Client
from tests.support.browser import chromium
from tests.support.forkserver import stop_fork_servers
from tests.support.postgres import PostgresCluster, connections_to
from tests.support.prefixed import PrefixedServer, prefixed_server
from tests.support.servers import (  # noqa: F401
    RedisServer,
    UvicornServer,
    auth,
    server_base_env,
)

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
DATABASES = ("sqlite", "postgres")
POSTGRES_TEST_NAME = "notify_test"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--redis-url",
        default=os.environ.get("NOTIFY_TEST_REDIS_URL", ""),
        help="use this Redis instead of starting redis-server",
    )
    parser.addoption(
        "--database",
        choices=DATABASES,
        default=os.environ.get("NOTIFY_TEST_DATABASE") or "sqlite",
        help="the database backend of the whole run (default: sqlite, or "
        "NOTIFY_TEST_DATABASE); postgres starts a throwaway cluster",
    )
    parser.addoption(
        "--database-tests-only",
        action="store_true",
        help="leave out the tests that use no database (a run on a second "
        "backend would only repeat them)",
    )


# A test uses the run's database if it needs one of these (or is marked
# django_db): the ORM in this process, or the database's URL for the servers
# and commands it starts, or the backend's name to choose what it checks.
DATABASE_FIXTURES = frozenset(
    {
        "db",
        "transactional_db",
        "django_db_setup",
        "test_database_url",
        "test_db_path",
        "postgres_cluster",
        "database_backend",
    }
)


def uses_database(item: pytest.Item) -> bool:
    if item.get_closest_marker("django_db") is not None:
        return True
    return not DATABASE_FIXTURES.isdisjoint(getattr(item, "fixturenames", ()))


def pytest_collection_modifyitems(
    config: pytest.Config, items: list[pytest.Item]
) -> None:
    if not config.getoption("--database-tests-only"):
        return
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    for item in items:
        (keep if uses_database(item) else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def pytest_configure(config: pytest.Config) -> None:
    # A run stopped with SIGTERM (a CI timeout, `kill`) unwinds like Ctrl-C,
    # so the session's fixtures stop the servers and the database they started.
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _interrupt)
    config.addinivalue_line(
        "markers",
        "timing: asserts how long something takes; where NOTIFY_TEST_LOCK is "
        "set (.ci/run's concurrent runs), runs while the other runs wait",
    )


def pytest_unconfigure(config: pytest.Config) -> None:
    stop_fork_servers()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


# Test runs going at the same time (.ci/run) share NOTIFY_TEST_LOCK, a lock
# file: every test holds it shared, from its set-up to its teardown, and a test
# marked `timing` holds it alone while its body runs (its set-up, which starts
# its servers, and its teardown hold it shared like any other test's), so no
# other run's test loads the CPU while it measures. Its companion file ".gate"
# lets a timing test in ahead of the shared holders queued after it. Every
# wait is bounded: past LOCK_WAIT seconds a test goes ahead without the lock.
LOCK_WAIT = 180.0
_run_lock = pytest.StashKey[Any]()  # the test's open lock file
_timer = pytest.StashKey[Any]()  # the settings of pytest-timeout's timer


def _flock(file: Any, operation: int, deadline: float) -> bool:
    while True:
        try:
            fcntl.flock(file, operation | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)


def _take(lock: Any, alone: bool) -> None:
    """Take ``lock`` shared or alone, through the gate (whatever it held
    before is released first: flock converts, not atomically)."""
    deadline = time.monotonic() + LOCK_WAIT
    with open(lock.name + ".gate", "a") as gate:
        gated = _flock(gate, fcntl.LOCK_EX, deadline)
        try:
            _flock(lock, fcntl.LOCK_EX if alone else fcntl.LOCK_SH, deadline)
        finally:
            if gated and not alone:
                fcntl.flock(gate, fcntl.LOCK_UN)
        if alone:  # the gate stays closed to shared holders until it is done
            lock.gate = os.dup(gate.fileno())


def _give_back(lock: Any, keep_shared: bool = False) -> None:
    """Release ``lock``, or with ``keep_shared`` turn alone into shared: no
    one can take it meanwhile, the gate being still closed."""
    if keep_shared:  # (held alone: it was, unless the wait for it ran out)
        with contextlib.suppress(BlockingIOError):
            fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
    else:
        fcntl.flock(lock, fcntl.LOCK_UN)
    gate = getattr(lock, "gate", None)
    if gate is not None:
        os.close(gate)  # the gate's lock goes with its last descriptor
        lock.gate = None


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_protocol(
    item: pytest.Item, nextitem: pytest.Item | None
) -> Generator[None, object, object]:
    path = os.environ.get("NOTIFY_TEST_LOCK")
    if not path:
        return (yield)
    with open(path, "a") as lock:  # closing it releases what is still held
        _take(lock, alone=False)
        item.stash[_run_lock] = lock
        try:
            return (yield)
        finally:
            del item.stash[_run_lock]


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_timeout_set_timer(item: pytest.Item, settings: Any) -> None:
    item.stash[_timer] = settings  # and pytest-timeout goes on to set it


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    lock = item.stash.get(_run_lock, None)
    if lock is None or item.get_closest_marker("timing") is None:
        return (yield)
    # The wait for the other runs' tests is not this test's time: its timeout
    # (pytest-timeout's, over set-up, body and teardown) starts again after it.
    timer = item.stash.get(_timer, None)
    if timer is not None:
        item.config.hook.pytest_timeout_cancel_timer(item=item)
    _give_back(lock)
    _take(lock, alone=True)
    if timer is not None:
        item.config.hook.pytest_timeout_set_timer(item=item, settings=timer)
    try:
        return (yield)
    finally:
        _give_back(lock, keep_shared=True)  # for its teardown


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("servers")


@pytest.fixture(scope="session")
def database_backend(request: pytest.FixtureRequest) -> str:
    """``sqlite`` or ``postgres``: the backend of this whole run (--database)."""
    backend: str = request.config.getoption("--database")
    return backend


@pytest.fixture(scope="session")
def test_db_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("db") / "notify-test.sqlite3"


@pytest.fixture(scope="session")
def postgres_cluster(database_backend: str) -> Iterator[PostgresCluster | None]:
    """This run's own PostgreSQL cluster (None on SQLite runs)."""
    if database_backend != "postgres":
        yield None
        return
    cluster = PostgresCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def test_database_url(
    database_backend: str,
    test_db_path: Path,
    postgres_cluster: PostgresCluster | None,
) -> str:
    """``DATABASE_URL`` of the test database, for processes that share it."""
    if postgres_cluster is not None:
        return postgres_cluster.url(POSTGRES_TEST_NAME)
    return f"sqlite:///{test_db_path}"


def _use_default_database(config: dict[str, Any]) -> None:
    """Make ``config`` the "default" database before any test connects."""
    from django.conf import settings
    from django.db import connections

    connections.close_all()
    settings.DATABASES["default"] = config
    # The handler keeps the settings it read and the connections it made.
    connections._settings = None  # type: ignore[attr-defined]
    connections.__dict__.pop("settings", None)
    with contextlib.suppress(AttributeError):
        delattr(connections._connections, "default")  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def django_db_modify_db_settings(
    database_backend: str,
    test_db_path: Path,
    postgres_cluster: PostgresCluster | None,
) -> None:
    from django.conf import settings

    from project.settings import _database

    current = settings.DATABASES["default"]
    if postgres_cluster is not None:
        config = _database(postgres_cluster.url("postgres"))
        config["TEST"] = {"NAME": POSTGRES_TEST_NAME}
        _use_default_database(config)
    elif current["ENGINE"] != "django.db.backends.sqlite3":
        # DATABASE_URL names another database; the run uses SQLite still.
        _use_default_database(_database(f"sqlite:///{test_db_path}"))
    # A file, not in-memory SQLite: uvicorn processes share it with the tests.
    settings.DATABASES["default"].setdefault("TEST", {})
    if postgres_cluster is None:
        settings.DATABASES["default"]["TEST"]["NAME"] = str(test_db_path)


class ThreadConnections:
    """The database connections of every thread, kept until closed here.

    Django keeps a connection per thread and closes only the calling
    thread's. The others (``sync_to_async`` executors, the ASGI handler's
    pool) would be dropped unclosed when their thread ends, which psycopg
    reports as a ResourceWarning, and PostgreSQL refuses to drop a database
    still in use."""

    def __init__(self) -> None:
        self.opened: list[BaseDatabaseWrapper] = []

    def track(self, sender: object, connection: BaseDatabaseWrapper, **_: Any) -> None:
        self.opened.append(connection)

    def close(self, *, all_threads: bool) -> None:
        alive = {thread.ident for thread in threading.enumerate()}
        kept = []
        for wrapper in self.opened:
            if not all_threads and getattr(wrapper, "_thread_ident", None) in alive:
                kept.append(wrapper)
            elif wrapper.connection is not None:
                # Not wrapper.close(): that insists on the opening thread.
                with contextlib.suppress(Exception):
                    wrapper.connection.close()
                wrapper.connection = None
        self.opened = kept


_thread_connections = ThreadConnections()


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup: None, django_db_blocker: Any) -> Iterator[None]:
    """The test database, with every thread's connection closed before it is
    dropped."""
    from django.db.backends.signals import connection_created

    connection_created.connect(_thread_connections.track, weak=False)
    yield
    # The tokens' last uses of the final tests, written while the database
    # exists rather than by the writer's thread once it is gone.
    with django_db_blocker.unblock():
        write_used()
    connection_created.disconnect(_thread_connections.track)
    _thread_connections.close(all_threads=True)


@pytest.fixture(autouse=True)
def _close_connections_of_ended_threads() -> Iterator[None]:
    yield
    _thread_connections.close(all_threads=False)


@pytest.fixture(scope="session")
def database_connections(
    test_db_path: Path, postgres_cluster: PostgresCluster | None
) -> Callable[[int], list[str]]:
    """``connections(pid)``: the database connections process ``pid`` holds,
    one string each (stable while the connection stays open)."""
    if postgres_cluster is not None:
        port = postgres_cluster.port
        return lambda pid: connections_to(pid, port)

    def files(pid: int) -> list[str]:
        # SQLite keeps the file, its -wal and its -shm open per connection.
        found = []
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except FileNotFoundError:  # closed meanwhile
                continue
            if target.startswith(str(test_db_path)):
                found.append(target)
        return sorted(found)

    return files


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
    opener = forget_opener()
    if opener is not None:
        async with asyncio.timeout(10):
            await opener.aclose()


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
def server_env(test_database_url: str) -> dict[str, str]:
    """Environment for a uvicorn server sharing the test database."""
    env = server_base_env()
    env.update(
        DATABASE_URL=test_database_url,
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


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """The system's Chromium (NOTIFY_TEST_CHROMIUM), through Playwright."""
    async with chromium() as launched:
        yield launched


@pytest.fixture
def prefixed_host(
    workdir: Path, server_env: dict[str, str], redis_url: str, transactional_db: None
) -> Iterator[PrefixedServer]:
    """uvicorn serving a host project with notify under /notifications/."""
    with prefixed_server(workdir, server_env, redis_url) as server:
        yield server
