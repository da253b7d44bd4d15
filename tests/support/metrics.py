"""GET /metrics for the tests, read with prometheus-client's own parser."""

from __future__ import annotations

import httpx
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from tests.support.servers import auth


def samples(text: str) -> dict[str, float]:
    """Every sample of a /metrics body by name (ours carry no labels)."""
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def scrape(client: httpx.AsyncClient, url: str, token: str) -> dict[str, float]:
    response = await client.get(url + "/metrics", headers=auth(token))
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == CONTENT_TYPE_LATEST
    return samples(response.text)
