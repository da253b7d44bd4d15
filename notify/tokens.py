"""API tokens: ``Authorization: Bearer <token>``; only a hash is stored."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from django.contrib.auth.models import User
from django.http import HttpRequest

from notify.models import APIToken

PREFIX = "ntf_"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(
    user: User, *, name: str | None = None, can_publish: bool = False
) -> tuple[APIToken, str]:
    """Create a token for ``user``; return it with the secret (shown once)."""
    secret = PREFIX + secrets.token_urlsafe(32)
    name = name or f"{user.get_username()}-{secrets.token_hex(3)}"
    token = APIToken.objects.create(
        name=name, user=user, key_hash=hash_token(secret), can_publish=can_publish
    )
    return token, secret


@dataclass(frozen=True, slots=True)
class Bearer:
    present: bool
    token: APIToken | None


async def abearer(request: HttpRequest) -> Bearer:
    """The request's bearer token, if it sent one and it is valid."""
    header = request.headers.get("Authorization", "")
    scheme, _, secret = header.partition(" ")
    if scheme.lower() != "bearer":
        return Bearer(False, None)
    secret = secret.strip()
    if not secret:
        return Bearer(True, None)
    token = (
        await APIToken.objects.select_related("user")
        .filter(key_hash=hash_token(secret), user__is_active=True)
        .afirst()
    )
    return Bearer(True, token)
