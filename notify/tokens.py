"""API tokens: ``Authorization: Bearer <token>``; only a hash is stored."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.http import HttpRequest

from notify.models import APIToken
from notify.prepared import Prepared

PREFIX = "ntf_"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(
    user: User, *, name: str | None = None, can_publish: bool = False
) -> tuple[APIToken, str]:
    """Create a token for ``user``; return it with the secret (shown once)."""
    secret = PREFIX + secrets.token_urlsafe(32)
    name = name or f"{user.get_username()[:93]}-{secrets.token_hex(3)}"  # 100 at most
    token = APIToken.objects.create(
        name=name, user=user, key_hash=hash_token(secret), can_publish=can_publish
    )
    return token, secret


@dataclass(frozen=True, slots=True)
class Bearer:
    present: bool
    token: APIToken | None


_TOKEN = Prepared(
    lambda key_hash: APIToken.objects.filter(key_hash=key_hash, user__is_active=True),
    [str],
)
_USER = Prepared(lambda pk: get_user_model()._default_manager.filter(pk=pk), [int])


def bearer_secret(request: HttpRequest) -> str | None:
    """The secret of ``Authorization: Bearer <secret>`` ("" when empty), or
    None when the request sent no bearer token."""
    header = request.META.get("HTTP_AUTHORIZATION", "")
    scheme, _, secret = header.partition(" ")
    return secret.strip() if scheme.lower() == "bearer" else None


def bearer(request: HttpRequest) -> Bearer:
    """The request's bearer token, if it sent one and it is valid, with its
    user (queries compiled once: every API call asks this)."""
    secret = bearer_secret(request)
    if secret is None:
        return Bearer(False, None)
    if not secret:
        return Bearer(True, None)
    tokens = _TOKEN.instances(hash_token(secret))
    if not tokens:
        return Bearer(True, None)
    token = tokens[0]
    users = _USER.instances(token.user_id)
    if not users or not users[0].is_active:  # deactivated meanwhile
        return Bearer(True, None)
    token.user = users[0]
    return Bearer(True, token)


abearer = sync_to_async(bearer)
