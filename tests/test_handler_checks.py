"""notify.W002: a project whose ASGI module does not use notify's handler is
warned that each open stream holds a thread."""

from __future__ import annotations

import pytest
from django.core.checks import Tags, run_checks
from django.test import override_settings

from notify.handler_checks import uses_notify_handler


def _warnings() -> list[str]:
    return [m.id or "" for m in run_checks(tags=[Tags.compatibility])]


def test_the_demo_project_uses_notifys_handler():
    assert "notify.W002" not in _warnings()


@override_settings(ASGI_APPLICATION="tests.support.stocksite.asgi.application")
def test_djangos_stock_handler_is_a_warning():
    found = [m for m in run_checks(tags=[Tags.compatibility]) if m.id == "notify.W002"]
    assert len(found) == 1
    assert "stocksite/asgi.py" in found[0].msg
    assert "holds a thread" in found[0].msg
    assert not found[0].is_serious()


@override_settings(
    ASGI_APPLICATION=None, SETTINGS_MODULE="tests.support.stocksite.settings"
)
def test_without_asgi_application_the_module_beside_the_settings_is_read():
    assert "notify.W002" in _warnings()


@override_settings(ASGI_APPLICATION=None, SETTINGS_MODULE="project.settings")
def test_the_demo_asgi_module_beside_its_settings_passes():
    assert "notify.W002" not in _warnings()


@override_settings(ASGI_APPLICATION="nowhere.asgi.application")
def test_an_asgi_module_that_cannot_be_found_is_not_reported():
    assert "notify.W002" not in _warnings()


@pytest.mark.parametrize(
    ("source", "uses"),
    [
        ("from notify.asgi import get_asgi_application", True),
        ("import notify.asgi\napplication = notify.asgi.get_asgi_application()", True),
        ("from notify import asgi", True),
        ("from django.core.asgi import get_asgi_application", False),
        ("import notify", False),
    ],
)
def test_what_counts_as_using_the_handler(source, uses):
    assert uses_notify_handler(source) is uses
