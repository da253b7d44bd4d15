"""Who may read and who may publish."""

from __future__ import annotations

from dataclasses import dataclass

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.http import HttpRequest

from notify.models import APIToken
from notify.tokens import abearer, bearer


@dataclass(frozen=True, slots=True)
class Caller:
    """The authenticated party of a request."""

    user: AbstractBaseUser | AnonymousUser
    token: APIToken | None = None  # set when authenticated by bearer token
    bad_token: bool = False

    @property
    def authenticated(self) -> bool:
        return bool(self.user.is_authenticated and self.user.is_active)

    @property
    def user_id(self) -> int:
        return int(self.user.pk or 0)

    @property
    def by_session(self) -> bool:
        return self.authenticated and self.token is None


async def acaller(request: HttpRequest) -> Caller:
    """Bearer token first; otherwise the session. An invalid token never falls
    back to the session."""
    bearer = await abearer(request)
    if bearer.present:
        if bearer.token is None:
            return Caller(AnonymousUser(), bad_token=True)
        return Caller(bearer.token.user, bearer.token)
    return Caller(await request.auser())


def caller(request: HttpRequest) -> Caller:
    """:func:`acaller` for synchronous code (a request's worker thread)."""
    found = bearer(request)
    if found.present:
        if found.token is None:
            return Caller(AnonymousUser(), bad_token=True)
        return Caller(found.token.user, found.token)
    return Caller(request.user)


def can_publish(caller: Caller) -> bool:
    if not caller.authenticated:
        return False
    if caller.token is not None:
        return caller.token.can_publish
    return is_staff(caller)


def is_staff(caller: Caller) -> bool:
    return caller.authenticated and bool(getattr(caller.user, "is_staff", False))
