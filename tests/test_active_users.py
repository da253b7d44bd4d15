"""The kept count of active users (notify/active_users.py): what a publish to
everyone reports as ``recipients``."""

from __future__ import annotations

import time

import pytest
from django.contrib.auth.models import User
from django.db import connection, transaction

import notify
from notify import active_users

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _nothing_kept():
    active_users.forget()
    yield
    active_users.forget()


def _insert_user_behind_the_orms_back(name: str) -> None:
    """As another process would: no signal here."""
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO auth_user (password, is_superuser, username, first_name,"
            " last_name, email, is_staff, is_active, date_joined)"
            " VALUES ('!', %s, %s, '', '', '', %s, %s, %s)",
            [False, name, False, True, "2026-01-01 00:00:00+00:00"],
        )


def test_the_count_is_kept_for_a_moment_then_made_again(monkeypatch):
    monkeypatch.setattr(active_users, "KEEP_SECONDS", 0.3)
    User.objects.create(username="alice")
    assert active_users.count(in_transaction=False) == 1
    _insert_user_behind_the_orms_back("bob")
    assert active_users.count(in_transaction=False) == 1  # kept
    time.sleep(0.35)
    assert active_users.count(in_transaction=False) == 2


def test_inside_a_transaction_the_count_is_made_afresh():
    User.objects.create(username="alice")
    assert active_users.count(in_transaction=False) == 1
    _insert_user_behind_the_orms_back("bob")
    assert active_users.count(in_transaction=True) == 2


def _deactivate(user: User) -> None:
    user.is_active = False
    user.save()


@pytest.mark.parametrize(
    "change",
    [
        lambda alice: User.objects.create(username="bob"),
        lambda alice: alice.delete(),
        lambda alice: _deactivate(alice),
    ],
    ids=["created", "deleted", "deactivated"],
)
def test_a_change_through_the_orm_is_counted_at_once(change):
    alice = User.objects.create(username="alice")
    before = active_users.count(in_transaction=False)
    change(alice)
    assert active_users.count(in_transaction=False) != before


def test_a_save_that_changes_nothing_it_counts_keeps_the_count():
    alice = User.objects.create(username="alice")
    assert active_users.count(in_transaction=False) == 1
    _insert_user_behind_the_orms_back("bob")
    alice.first_name = "Alice"
    alice.save()  # e.g. a login's last_login
    assert active_users.count(in_transaction=False) == 1


def test_a_change_committed_later_is_counted_once_committed():
    assert active_users.count(in_transaction=False) == 0
    with transaction.atomic():
        User.objects.create(username="alice")
        # Another thread counting now would not see alice yet; pretend so.
        active_users._keep(0, time.monotonic(), active_users._generation)
    assert active_users.count(in_transaction=False) == 1


def test_a_count_made_while_users_changed_is_not_kept():
    generation = active_users._generation
    active_users.forget()  # a change while the count ran
    active_users._keep(99, time.monotonic(), generation)
    assert active_users.count(in_transaction=False) == 0


def test_publish_to_everyone_reports_the_active_users():
    User.objects.create(username="alice")
    User.objects.create(username="bob", is_active=False)
    assert notify.publish(title="one").recipients == 1
    User.objects.create(username="carol")
    assert notify.publish(title="two").recipients == 2
