"""Driving the ASGI application in process (asgiref's ApplicationCommunicator)."""

from __future__ import annotations

from typing import Any

from asgiref import testing

# asgiref.testing has no annotations.
ApplicationCommunicator: Any = testing.ApplicationCommunicator


def http_scope(
    method: str, path: str, token: str, query: bytes = b"", **headers: str
) -> dict[str, Any]:
    """An HTTP scope from 127.0.0.1 with a bearer token; ``content_type="..."``
    becomes the header ``content-type``."""
    sent = [(b"host", b"127.0.0.1"), (b"authorization", f"Bearer {token}".encode())]
    sent += [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()]
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "root_path": "",
        "headers": sent,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 80),
    }
