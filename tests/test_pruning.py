"""Retention: publishing never prunes; server processes prune on a thread of
their own every ``NOTIFY_PRUNE_SECONDS``; ``notify_prune`` does it for cron."""

from __future__ import annotations

import sys
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from notify.models import Notification, RetentionMark
from notify.pruning import start_pruner
from tests.support import forkserver


def _old(title: str = "old") -> Notification:
    return Notification.objects.create(
        title=title, audience="all", created_at=timezone.now() - timedelta(days=31)
    )


def _titles() -> list[str]:
    return sorted(Notification.objects.values_list("title", flat=True))


def test_publishing_deletes_nothing(users, server_env):
    """In a fresh process, as a publish from a shell or a worker would be."""
    _old()
    sent = forkserver.run(
        [sys.executable, "manage.py", "notify_send", "--all", "--title", "new"],
        server_env,
        timeout=60,
    )
    assert sent.returncode == 0, sent.stderr
    assert _titles() == ["new", "old"]
    assert not RetentionMark.objects.exists()


def test_a_server_process_prunes_on_its_own(start_server, users):
    _old("old one")
    _old("old two")
    Notification.objects.create(title="recent", audience="all")
    start_server(NOTIFY_PRUNE_SECONDS="0.5")  # answers /healthz: it has started
    deadline = time.monotonic() + 10
    while _titles() != ["recent"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _titles() == ["recent"]
    assert RetentionMark.objects.get().pruned_through > 0


def test_a_server_process_does_not_prune_when_off(settings):
    settings.NOTIFY_PRUNE_SECONDS = 0
    assert start_pruner() is False


@pytest.mark.parametrize("value", ["-1", "soon"])
def test_a_bad_prune_interval_fails_at_start(server_env, value):
    loaded = forkserver.run(
        [sys.executable, "manage.py", "check"],
        server_env | {"NOTIFY_PRUNE_SECONDS": value},
        timeout=60,
    )
    assert loaded.returncode != 0
    last = loaded.stderr.strip().splitlines()[-1]
    assert last.startswith("django.core.exceptions.ImproperlyConfigured: ")
    assert "NOTIFY_PRUNE_SECONDS" in last
