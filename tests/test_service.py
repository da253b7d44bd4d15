"""/healthz and /metrics."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import httpx
from django.test import AsyncClient, override_settings
from prometheus_client import CONTENT_TYPE_LATEST

from tests.support.api import Client, body
from tests.support.metrics import samples
from tests.support.servers import ROOT, UvicornServer, free_port, wait_for


async def test_healthz_reports_ok_with_the_memory_broker(users):
    response = await AsyncClient().get("/healthz")
    assert response.status_code == 200
    assert body(response) == {"status": "ok", "broker": "memory", "database": "ok"}


async def test_healthz_reports_ok_with_redis(start_server, redis_url):
    server = start_server(REDIS_URL=redis_url)
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(server.url + "/healthz")
    assert response.status_code == 200
    assert body(response) == {"status": "ok", "broker": "redis", "database": "ok"}


async def test_with_debug_on_static_files_are_served_without_warnings(start_server):
    # The demo (scripts/run) serves static files itself; nginx does in the stack.
    server = start_server(DEBUG="1", PYTHONWARNINGS="always")
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        css = await client.get("/static/notify/css/notify.css")
        admin_css = await client.get("/static/admin/css/base.css")
        missing = await client.get("/static/notify/css/no-such.css")
    assert css.status_code == 200
    assert css.headers["Content-Type"].startswith("text/css")
    assert css.content == (ROOT / "static" / "css" / "notify.css").read_bytes()
    assert admin_css.status_code == 200
    assert missing.status_code == 404
    server.stop()
    assert "Warning" not in server.output()


@contextlib.contextmanager
def _unhealthy_server(
    workdir: Path, env: dict[str, str], name: str
) -> Iterator[UvicornServer]:
    """A uvicorn server whose /healthz is expected to say 503."""
    server = UvicornServer(workdir, env, name)
    super(UvicornServer, server).start()  # its own start() waits for a 200
    try:
        wait_for(lambda: _answers(server.url), 30, f"uvicorn ({name})")
        yield server
    finally:
        server.stop()


async def test_healthz_is_503_when_redis_is_down(workdir, server_env, transactional_db):
    dead = f"redis://127.0.0.1:{free_port()}/0"
    env = server_env | {"REDIS_URL": dead}
    with _unhealthy_server(workdir, env, "no-redis") as server:
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.get(server.url + "/healthz")
        assert response.status_code == 503
        got = body(response)
        assert got["status"] != "ok"
        assert got["broker"] == "redis"
        assert got["database"] == "ok"


def _answers(url: str) -> bool:
    try:
        httpx.get(url + "/healthz", timeout=2)
    except httpx.HTTPError:
        return False
    return True


async def test_metrics_needs_staff_or_the_metrics_token(client_for, users):
    anonymous = await AsyncClient().get("/metrics")
    assert anonymous.status_code == 401
    assert "error" in body(anonymous)

    denied = await client_for("alice").get("/metrics")
    assert denied.status_code == 403
    assert "error" in body(denied)

    staff = AsyncClient()
    await staff.aforce_login(users["admin"])
    for client in (staff, client_for("admin")):
        response = await client.get("/metrics")
        assert response.status_code == 200
        _assert_prometheus(response.content.decode())


@override_settings(NOTIFY_METRICS_TOKEN="scrape-me-0123456789")
async def test_metrics_accepts_the_configured_token(users):
    response = await Client("scrape-me-0123456789").get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"] == CONTENT_TYPE_LATEST
    _assert_prometheus(response.content.decode())
    wrong = await Client("scrape-me-wrong").get("/metrics")
    assert wrong.status_code == 401


def _assert_prometheus(text: str) -> None:
    values = samples(text)
    for name in (
        "notify_open_streams",
        "notify_notifications_published_total",
        "notify_events_delivered_total",
        "notify_slow_client_disconnects_total",
        "notify_replayed_events_total",
    ):
        assert name in values, name


@override_settings(NOTIFY_METRICS_TOKEN="scrape-token")
async def test_metrics_answers_json_for_any_authorization_value(users):
    for value in ("Bearer é", "Bearer " + "ü" * 5000, "Basic \x01", "Bearer"):
        response = await AsyncClient().get("/metrics", headers={"Authorization": value})
        assert response.status_code == 401, value
        assert "error" in body(response)


async def test_a_database_that_is_gone_is_a_json_503_on_every_endpoint(
    workdir, server_env, tokens
):
    gone = f"sqlite:///{workdir / 'no-such-directory' / 'db.sqlite3'}"
    env = server_env | {"DATABASE_URL": gone}
    with _unhealthy_server(workdir, env, "no-db") as server:
        async with httpx.AsyncClient(timeout=10) as client:
            for method, path in [
                ("GET", "/events/"),
                ("GET", "/events/poll?timeout=0"),
                ("GET", "/api/notifications"),
                ("POST", "/api/notifications"),
                ("POST", "/api/notifications/read-all"),
            ]:
                response = await client.request(
                    method,
                    server.url + path,
                    headers={"Authorization": f"Bearer {tokens['admin']}"},
                    json={"audience": "all", "title": "t"},
                )
                assert response.status_code == 503, (path, response.text)
                assert response.headers["Content-Type"] == "application/json"
                assert response.headers["Retry-After"] == "5"
                assert "database" in response.json()["error"], path
