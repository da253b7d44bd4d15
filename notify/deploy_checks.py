"""Django's deployment checks (``check --deploy``) that find its middleware by
dotted path, for a MIDDLEWARE that holds subclasses of it (``notify.middleware``).

Django looks for its own paths only. With subclasses it warns that the
security, clickjacking and CSRF middleware are missing (security.W001, W002,
W003), which is false, and skips every check that depends on them (HSTS, the
SSL redirect, nosniff, the referrer and opener policies, ``X_FRAME_OPTIONS``,
``CSRF_COOKIE_SECURE``), which hides real problems.

Here a middleware counts when MIDDLEWARE holds Django's class or a subclass.
The dependent checks run, with Django's ids and messages, when only a subclass
is there (otherwise Django runs them itself, and nothing is said twice). A
project that silences W001–W003 because of its subclasses still hears of a
middleware that is really missing, as notify.W101–W103.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Tags, Warning, register
from django.core.checks.security import base, csrf
from django.utils.module_loading import import_string

SECURITY = "django.middleware.security.SecurityMiddleware"
XFRAME = "django.middleware.clickjacking.XFrameOptionsMiddleware"
CSRF = "django.middleware.csrf.CsrfViewMiddleware"


def _middleware(dotted: str) -> str | None:
    """``"exact"`` when MIDDLEWARE names ``dotted`` itself, ``"subclass"``
    when it holds a subclass of it, else None."""
    if dotted in settings.MIDDLEWARE:
        return "exact"
    wanted = import_string(dotted)
    for entry in settings.MIDDLEWARE:
        try:
            found = import_string(entry)
        except ImportError:
            continue  # Django's own checks and startup report it
        if isinstance(found, type) and issubclass(found, wanted):
            return "subclass"
    return None


def _missing(dotted: str, django_warning: Warning, id: str) -> list[CheckMessage]:
    if django_warning.id not in settings.SILENCED_SYSTEM_CHECKS:
        return []  # Django reports it
    if _middleware(dotted) is not None:
        return []
    return [
        Warning(
            django_warning.msg,
            hint=f"{django_warning.id} is silenced; this check accepts subclasses.",
            id=id,
        )
    ]


@register(Tags.security, deploy=True)
def check_middleware_present(**kwargs: Any) -> list[CheckMessage]:
    return [
        *_missing(SECURITY, base.W001, "notify.W101"),
        *_missing(XFRAME, base.W002, "notify.W102"),
        *_missing(CSRF, csrf.W003, "notify.W103"),
    ]


@register(Tags.security, deploy=True)
def check_security_settings(**kwargs: Any) -> list[CheckMessage]:
    """Django's checks of what SecurityMiddleware does, in Django's order."""
    if _middleware(SECURITY) != "subclass":
        return []
    found: list[CheckMessage] = []
    hsts = settings.SECURE_HSTS_SECONDS
    if not hsts:
        found.append(base.W004)
    if hsts and settings.SECURE_HSTS_INCLUDE_SUBDOMAINS is not True:
        found.append(base.W005)
    if hsts and settings.SECURE_HSTS_PRELOAD is not True:
        found.append(base.W021)
    if settings.SECURE_CONTENT_TYPE_NOSNIFF is not True:
        found.append(base.W006)
    if settings.SECURE_SSL_REDIRECT is not True:
        found.append(base.W008)
    policy: Any = settings.SECURE_REFERRER_POLICY
    if policy is None:
        found.append(base.W022)
    else:
        values = (
            {v.strip() for v in policy.split(",")}
            if isinstance(policy, str)
            else set(policy)
        )
        if not values <= base.REFERRER_POLICY_VALUES:
            found.append(base.E023)
    opener: Any = settings.SECURE_CROSS_ORIGIN_OPENER_POLICY
    if opener is not None and opener not in base.CROSS_ORIGIN_OPENER_POLICY_VALUES:
        found.append(base.E024)
    return found


@register(Tags.security, deploy=True)
def check_xframe_deny(**kwargs: Any) -> list[CheckMessage]:
    if _middleware(XFRAME) == "subclass" and settings.X_FRAME_OPTIONS != "DENY":
        return [base.W019]
    return []


@register(Tags.security, deploy=True)
def check_csrf_cookie_secure(**kwargs: Any) -> list[CheckMessage]:
    if (
        _middleware(CSRF) == "subclass"
        and not settings.CSRF_USE_SESSIONS
        and settings.CSRF_COOKIE_SECURE is not True
    ):
        return [csrf.W016]
    return []
