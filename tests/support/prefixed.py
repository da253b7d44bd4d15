"""notify mounted under a prefix by a host project (prefixed_urls.py), served
by real uvicorn with Redis, for tests of URLs and widgets."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.support.metrics import samples
from tests.support.servers import UvicornServer, auth

PREFIX = "/notifications"
METRICS_TOKEN = "prefixed-metrics"


class PrefixedServer(UvicornServer):
    health_path = PREFIX + "/healthz"

    async def publish(self, admin_token: str, title: str) -> int:
        async with httpx.AsyncClient(base_url=self.url, timeout=10) as client:
            response = await client.post(
                f"{PREFIX}/api/notifications",
                json={"audience": "all", "title": title},
                headers=auth(admin_token),
            )
        assert response.status_code == 201, response.text
        return int(response.json()["id"])

    async def open_streams(self) -> int:
        async with httpx.AsyncClient(base_url=self.url, timeout=5) as client:
            text = (
                await client.get(f"{PREFIX}/metrics", headers=auth(METRICS_TOKEN))
            ).text
        return int(samples(text)["notify_open_streams"])


@contextmanager
def prefixed_server(
    workdir: Path, server_env: dict[str, str], redis_url: str
) -> Iterator[PrefixedServer]:
    env = server_env | {
        "DJANGO_SETTINGS_MODULE": "tests.support.prefixed_settings",
        "REDIS_URL": redis_url,
        "NOTIFY_METRICS_TOKEN": METRICS_TOKEN,
    }
    server = PrefixedServer(workdir, env, "prefixed")
    server.start()
    try:
        yield server
    finally:
        server.stop()
