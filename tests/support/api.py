"""Helpers for the JSON API tests: an ``AsyncClient`` with a bearer token."""

from __future__ import annotations

import json
from typing import Any

from django.test import AsyncClient

from notify.models import Notification
from notify.publishing import persist
from notify.validation import validate
from tests.support.servers import auth

API = "/api/notifications"
# The wire JSON of a notification, keys in order.
WIRE_KEYS = [
    "id",
    "level",
    "title",
    "body",
    "url",
    "data",
    "audience",
    "created_at",
    "expires_at",
    "read",
]


class Client(AsyncClient):
    """``AsyncClient`` sending a bearer token on every request (its own
    ``headers=`` argument is dropped by Django 5.2's ``AsyncClient``)."""

    def __init__(self, token: str | None = None) -> None:
        super().__init__()
        self.token = token

    def generic(self, *args: Any, headers: Any = None, **kwargs: Any) -> Any:
        if self.token is not None:
            headers = auth(self.token) | dict(headers or {})
        return super().generic(*args, headers=headers, **kwargs)


async def post_json(client: AsyncClient, payload: Any, path: str = API) -> Any:
    return await client.post(
        path, data=json.dumps(payload), content_type="application/json"
    )


def body(response: Any) -> Any:
    """The JSON of a Django test response or an httpx response."""
    headers = response.headers
    assert headers["Content-Type"].startswith("application/json")
    return json.loads(response.content)


def note(title: str = "Hello", audience: Any = "all", **fields: Any) -> Notification:
    """A committed notification, made without any broker."""
    return persist(
        validate({"audience": audience, "title": title, **fields})
    ).notification
