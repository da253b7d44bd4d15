"""``check --deploy`` with notify's subclasses of Django's middleware: no false
warnings, and the real ones still reported."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from typing import Any

import pytest
from django.conf import settings
from django.core.checks import Tags, run_checks
from django.test import override_settings

from tests.support import forkserver
from tests.support.servers import ROOT

SECURE: dict[str, Any] = {
    "DEBUG": False,
    "SECRET_KEY": "k7Qv2-Zp9xLmN4rT8wYb1cF6hJ3sD0gA5eU7iO2pK9lB4nM8vC1xZ6q",
    "SESSION_COOKIE_SECURE": True,
    "CSRF_COOKIE_SECURE": True,
    "SECURE_SSL_REDIRECT": True,
    "SECURE_HSTS_SECONDS": 31_536_000,
    "SECURE_HSTS_INCLUDE_SUBDOMAINS": True,
    "SECURE_HSTS_PRELOAD": True,
}
DJANGO_MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]


def _reported(**overrides: Any) -> list[str]:
    """Ids of the security warnings and errors ``check --deploy`` shows."""
    with override_settings(**(SECURE | overrides)):
        return sorted(
            m.id
            # Only the security checks: the model checks need the database
            # on Django 6.1 (a JSONField asks the backend what it supports).
            for m in run_checks(tags=[Tags.security], include_deployment_checks=True)
            if m.id
            and m.id.startswith(("security.", "notify.W1"))
            and not m.is_silenced()
        )


def _without(dotted: str) -> list[str]:
    return [m for m in settings.MIDDLEWARE if m != dotted]


def test_secure_settings_report_no_security_warning():
    assert _reported() == []


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"SESSION_COOKIE_SECURE": False}, "security.W010"),
        ({"CSRF_COOKIE_SECURE": False}, "security.W016"),
        ({"SECURE_HSTS_SECONDS": 0}, "security.W004"),
        ({"SECURE_HSTS_INCLUDE_SUBDOMAINS": False}, "security.W005"),
        ({"SECURE_HSTS_PRELOAD": False}, "security.W021"),
        ({"SECURE_CONTENT_TYPE_NOSNIFF": False}, "security.W006"),
        ({"SECURE_SSL_REDIRECT": False}, "security.W008"),
        ({"SECURE_REFERRER_POLICY": None}, "security.W022"),
        ({"SECURE_REFERRER_POLICY": "no-such-policy"}, "security.E023"),
        ({"SECURE_CROSS_ORIGIN_OPENER_POLICY": "nope"}, "security.E024"),
        ({"X_FRAME_OPTIONS": "SAMEORIGIN"}, "security.W019"),
        ({"DEBUG": True}, "security.W018"),
    ],
)
def test_an_insecure_setting_is_reported(overrides, expected):
    assert _reported(**overrides) == [expected]


@pytest.mark.parametrize(
    ("missing", "expected"),
    [
        ("notify.middleware.SecurityMiddleware", "notify.W101"),
        ("notify.middleware.XFrameOptionsMiddleware", "notify.W102"),
        ("notify.middleware.CsrfViewMiddleware", "notify.W103"),
    ],
)
def test_a_middleware_really_missing_is_reported(missing, expected):
    assert _reported(MIDDLEWARE=_without(missing)) == [expected]


def test_djangos_own_middleware_is_reported_by_django_alone():
    stock = {"MIDDLEWARE": DJANGO_MIDDLEWARE, "SILENCED_SYSTEM_CHECKS": []}
    assert _reported(**stock) == []
    insecure = stock | {"CSRF_COOKIE_SECURE": False, "SECURE_HSTS_SECONDS": 0}
    assert Counter(_reported(**insecure)) == {"security.W004": 1, "security.W016": 1}
    missing = stock | {"MIDDLEWARE": DJANGO_MIDDLEWARE[1:]}
    assert _reported(**missing) == ["security.W001"]


def test_manage_py_check_deploy_passes_with_secure_environment(tmp_path):
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("NOTIFY_", "REDIS_URL", "DATABASE_URL", "DJANGO_"))
    }
    env |= {
        "DATABASE_URL": f"sqlite:///{tmp_path / 'deploy.sqlite3'}",
        "PYTHONPATH": str(ROOT),
        "DEBUG": "off",
        "SECRET_KEY": SECURE["SECRET_KEY"],
        "SESSION_COOKIE_SECURE": "on",
        "CSRF_COOKIE_SECURE": "on",
        "SECURE_SSL_REDIRECT": "on",
        "SECURE_HSTS_SECONDS": "31536000",
        "SECURE_HSTS_INCLUDE_SUBDOMAINS": "on",
        "SECURE_HSTS_PRELOAD": "on",
    }
    command = [sys.executable, "manage.py", "check", "--deploy", "--fail-level"]

    def check(**extra: str) -> subprocess.CompletedProcess[str]:
        return forkserver.run([*command, "WARNING"], env | extra, timeout=60)

    passed = check()
    assert passed.returncode == 0, passed.stderr
    assert "no issues" in passed.stdout
    failed = check(CSRF_COOKIE_SECURE="off")
    assert failed.returncode != 0
    assert "security.W016" in failed.stderr
