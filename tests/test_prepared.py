"""Queries and the INSERT compiled once (notify/prepared.py,
notify/insertion.py) give what the ORM gives, on every database backend."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from django.contrib.auth.models import Group, User
from django.db import Error, connection, models
from django.db.models import Value
from django.db.models.signals import post_save, pre_save
from django.test.utils import isolate_apps

from notify.insertion import PreparedInsert
from notify.models import APIToken, Notification
from notify.prepared import Prepared, PreparedIn, one_cursor

pytestmark = pytest.mark.django_db

FIELDS = [f.attname for f in Notification._meta.concrete_fields]


def _values(obj: object) -> dict[str, object]:
    return {name: getattr(obj, name) for name in FIELDS}


def _notification(**overrides: object) -> Notification:
    fields: dict[str, object] = {
        "level": "warning",
        "title": "Disk \u00e9 \U0001f4be",
        "body": "line one\nline two",
        "url": "https://example.com/x?y=1",
        "data": {"nested": {"list": [1, 2.5, None, True]}, "s": "\u00e9"},
        "created_at": datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
        "expires_at": datetime(2027, 1, 2, 3, 4, 5, tzinfo=UTC),
        "audience": "all",
        "recipients": 7,
    }
    fields.update(overrides)
    return Notification(**fields)


def test_instances_match_the_orm_field_for_field():
    alice = User.objects.create(username="alice")
    n = Notification.objects.create(
        title="t", audience="all", sender=alice, data={"k": [1]}, url=None
    )
    query = Prepared(lambda pk: Notification.objects.filter(pk=pk), [int])
    (got,) = query.instances(n.pk)
    assert _values(got) == _values(Notification.objects.get(pk=n.pk))
    assert got._state.adding is False and got._state.db == "default"
    assert got.created_at.tzinfo is not None  # converted as the ORM does


def test_instances_fill_the_related_object_of_select_related():
    bob = User.objects.create(username="bob", is_staff=True)
    token = APIToken.objects.create(name="t", user=bob, key_hash="h" * 64)
    query = Prepared(
        lambda key: APIToken.objects.filter(key_hash=key).select_related("user"),
        [str],
    )
    (got,) = query.instances("h" * 64)
    assert got.pk == token.pk and got.can_publish is False
    assert "user" in got._state.fields_cache  # no query to reach it
    assert got.user.username == "bob" and got.user.is_staff is True
    assert got.user.date_joined == User.objects.get(pk=bob.pk).date_joined


def test_instances_give_none_for_a_missing_nullable_relation():
    n = Notification.objects.create(title="nobody sent it", audience="all")
    query = Prepared(
        lambda pk: Notification.objects.filter(pk=pk).select_related("sender"),
        [int],
    )
    (got,) = query.instances(n.pk)
    assert got.sender is None and got.sender_id is None


def test_instances_refuse_annotations_they_would_drop():
    query = Prepared(lambda pk: Group.objects.filter(pk=pk).annotate(n=Value(1)), [int])
    with pytest.raises(ValueError, match="annotated"):
        query.instances(1)


def test_instances_refuse_a_query_of_values():
    query = Prepared(lambda pk: Group.objects.filter(pk=pk).values_list("id"), [int])
    with pytest.raises(TypeError):
        query.instances(1)


def test_the_prepared_insert_stores_what_save_stores():
    alice = User.objects.create(username="alice")
    insert = PreparedInsert(Notification)
    cases: list[dict[str, object]] = [
        {"sender": alice},
        {"url": None, "expires_at": None, "data": {}},
        {"data": {"a": "x" * 5000}, "body": ""},
    ]
    for overrides in cases:
        ours = _notification(**overrides)
        insert.insert(ours)
        theirs = _notification(**overrides)
        theirs.save(force_insert=True)
        assert ours.pk == theirs.pk - 1
        assert ours._state.adding is False
        stored = _values(Notification.objects.get(pk=ours.pk))
        expected = _values(Notification.objects.get(pk=theirs.pk))
        assert {**stored, "id": 0} == {**expected, "id": 0}


def test_the_prepared_insert_numbers_rows_in_order():
    insert = PreparedInsert(Notification)
    made = [_notification(title=str(i)) for i in range(5)]
    for n in made:
        insert.insert(n)
    ids = [n.pk for n in made]
    assert ids == sorted(ids) and len(set(ids)) == 5
    assert list(
        Notification.objects.filter(pk__in=ids).order_by("pk").values_list("title")
    ) == [(str(i),) for i in range(5)]


@pytest.mark.parametrize("signal", [pre_save, post_save])
def test_save_receivers_still_run(signal):
    seen: list[tuple[str, bool]] = []

    def receiver(sender, instance, **kwargs):
        seen.append((instance.title, kwargs.get("created", True)))

    signal.connect(receiver, sender=Notification, weak=False)
    try:
        n = _notification(title="watched")
        PreparedInsert(Notification).insert(n)
    finally:
        signal.disconnect(receiver, sender=Notification)
    assert seen == [("watched", True)]
    assert Notification.objects.filter(pk=n.pk, title="watched").exists()


def test_a_time_in_another_zone_is_stored_as_the_same_instant():
    when = datetime(2026, 6, 1, 12, 0, 0, 1, tzinfo=UTC)
    n = _notification(created_at=when.astimezone(timezone(timedelta(hours=5.5))))
    PreparedInsert(Notification).insert(n)
    assert Notification.objects.get(pk=n.pk).created_at == when


def test_a_field_set_to_an_expression_is_saved_by_save():
    n = _notification(recipients=Value(2) + Value(3))
    PreparedInsert(Notification).insert(n)
    assert Notification.objects.get(pk=n.pk).recipients == 5


def test_an_unsaved_sender_is_refused_as_save_refuses_it():
    n = _notification(sender=User(username="nobody"))
    with pytest.raises(ValueError, match="unsaved related object"):
        PreparedInsert(Notification).insert(n)
    assert not Notification.objects.exists()


def test_a_primary_key_given_by_the_caller_is_kept():
    n = _notification(id=424242)
    PreparedInsert(Notification).insert(n)
    assert n.pk == 424242 and Notification.objects.filter(pk=424242).exists()


@isolate_apps("notify")
def test_a_model_with_auto_now_fields_is_refused():
    class Stamped(models.Model):
        changed = models.DateTimeField(auto_now=True)

        class Meta:
            app_label = "notify"

    with pytest.raises(TypeError, match="auto_now"):
        PreparedInsert(Stamped)


def test_prepared_queries_inside_one_cursor_share_it():
    count = Prepared(lambda pk: Notification.objects.filter(pk__gte=pk), [int])
    seen: list[Any] = []

    def note(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        seen.append(context["cursor"])
        return execute(sql, params, many, context)

    with connection.execute_wrapper(note):
        count.rows(0)
        count.rows(0)
        with one_cursor():
            count.rows(1)
            with one_cursor():  # nested: still the same one
                count.rows(2)
            count.rows(3)
        count.rows(4)
    outside_before, outside_again, *inside, outside_after = seen
    assert outside_before is not outside_again
    assert len(inside) == 3 and inside[0] is inside[1] is inside[2]
    assert outside_after is not inside[0]
    with pytest.raises(Error):  # closed with the block
        inside[0].execute("SELECT 1")


@pytest.mark.parametrize("count", [0, 1, 5, 8, 9, 64, 70, 200])
def test_a_query_of_many_values_finds_what_the_orm_finds(count):
    for i in range(120):
        PreparedInsert(Notification).insert(_notification(title=f"n{i}"))
    ids = list(Notification.objects.values_list("id", flat=True))
    # Distinct, some of them no notification's, in no particular order.
    wanted = (ids[::-1] + [10**9 + i for i in range(count)])[:count]
    titles = PreparedIn(
        lambda pks: Notification.objects.filter(pk__in=pks).values_list("id", "title"),
        int,
    )
    expected = list(
        Notification.objects.filter(pk__in=wanted).values_list("id", "title")
    )
    assert sorted(titles.rows(wanted)) == sorted(expected)
