"""``notify.publish`` and ``notify.apublish``: the package's own functions,
whatever of notify has been imported (its admin imports the module that
implements them)."""

from __future__ import annotations

import inspect

import pytest
from django.contrib.auth.models import User

import notify
import notify.admin  # as Django's admin autodiscovery does
from notify import publishing
from notify.models import Notification


def test_the_package_functions_are_not_shadowed_by_a_module():
    assert inspect.isfunction(notify.publish)
    assert inspect.iscoroutinefunction(notify.apublish)


def test_the_package_functions_have_the_implementations_signature():
    for name in ("publish", "apublish"):
        ours = inspect.signature(getattr(notify, name))
        theirs = inspect.signature(getattr(publishing, name))
        assert ours == theirs


@pytest.mark.django_db(transaction=True)
def test_notify_publish_saves_a_notification():
    User.objects.create(username="alice")
    n = notify.publish(title="Backup finished", audience={"users": ["alice"]})
    assert Notification.objects.get(pk=n.pk).title == "Backup finished"


@pytest.mark.django_db(transaction=True)
async def test_notify_apublish_saves_a_notification():
    n = await notify.apublish(title="Deploy started", level="warning")
    assert (await Notification.objects.aget(pk=n.pk)).level == "warning"
