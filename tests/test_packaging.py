"""The wheel holds the app, its templates, static files, migrations and
py.typed, and nothing else: no demo project, no tests."""

from __future__ import annotations

import re
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

import notify
from tests.support.wheel import ROOT, build_wheel


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="module")
def names(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        return set(archive.namelist())


def test_wheel_is_named_for_the_distribution_and_version(wheel: Path) -> None:
    assert wheel.name == f"django_notify_sse-{notify.__version__}-py3-none-any.whl"


def test_wheel_holds_the_app_package_and_its_data(names: set[str]) -> None:
    for required in (
        "notify/__init__.py",
        "notify/py.typed",
        "notify/apps.py",
        "notify/asgi.py",
        "notify/broker/redis.py",
        "notify/migrations/__init__.py",
        "notify/migrations/0001_initial.py",
        "notify/management/commands/notify_send.py",
        "notify/management/commands/notify_token.py",
        "notify/templates/notify/inbox.html",
        "notify/templates/notify/broadcast.html",
        "notify/static/notify/js/notify.js",
        "notify/static/notify/css/notify.css",
    ):
        assert required in names, required


def test_every_template_and_static_file_of_the_app_is_in_the_wheel(
    names: set[str],
) -> None:
    expected = {
        "notify/templates/" + str(p.relative_to(ROOT / "templates"))
        for p in (ROOT / "templates" / "notify").rglob("*")
        if p.is_file()
    } | {
        # Under notify/ in the static namespace: a host's own js/page.js or
        # img/favicon.svg cannot stand for notify's.
        "notify/static/notify/" + str(p.relative_to(ROOT / "static"))
        for p in (ROOT / "static").rglob("*")
        if p.is_file()
    }
    assert expected <= names


def test_wheel_holds_nothing_but_the_app(names: set[str]) -> None:
    outside = {n for n in names if not n.startswith(("notify/", "django_notify_sse-"))}
    assert outside == set()
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
    assert not any(n.startswith(("project/", "tests/")) for n in names)


def test_wheel_metadata_states_the_support_matrix(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        (metadata_name,) = (n for n in archive.namelist() if n.endswith("/METADATA"))
        metadata = Parser().parsestr(archive.read(metadata_name).decode())
    assert metadata["Name"] == "django-notify-sse"
    assert metadata["Version"] == notify.__version__
    assert metadata["Requires-Python"] == "<3.14,>=3.11"
    requires = metadata.get_all("Requires-Dist") or []
    assert any(re.fullmatch(r"django<6\.2,>=5\.2", r, re.I) for r in requires)
    classifiers = set(metadata.get_all("Classifier") or [])
    for python in ("3.11", "3.12", "3.13"):
        assert f"Programming Language :: Python :: {python}" in classifiers
    for django in ("5.2", "6.1"):
        assert f"Framework :: Django :: {django}" in classifiers


def test_changelog_has_a_section_for_this_version() -> None:
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert f"## [{notify.__version__}]" in changelog
