"""The first replay of many resuming streams, read together
(notify/replay.py): each stream gets exactly what its own replay would send,
for fewer queries."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from notify import sse
from notify.inbox import mark_all_read, mark_read
from notify.models import Notification
from notify.publishing import publish
from notify.replay import replay_batch, replay_openings
from notify.visibility import Viewer, load_viewer

pytestmark = pytest.mark.django_db


def _alone(viewer: Viewer, after: int, limit: int) -> bytes:
    """What the stream's own replay sends from ``after``, every batch."""
    sent = b""
    while True:
        rows = replay_batch(viewer.user_id, after, limit)
        sent += b"".join(sse.event("notification", w, id=w["id"]) for w in rows)
        if len(rows) < limit:
            return sent
        after = rows[-1]["id"]


@pytest.fixture
def history(users):
    """Notifications to everyone, a group, users, one expired; some read."""
    made = [publish(title="to all 1")]
    made.append(publish(title="to ops", audience={"groups": ["ops"]}))
    made.append(publish(title="to carol", audience={"users": ["carol"]}))
    made.append(publish(title="to alice and bob", audience={"users": ["alice", "bob"]}))
    gone = publish(title="expired", expires_at=timezone.now() + timedelta(hours=1))
    Notification.objects.filter(pk=gone.id).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    made.append(publish(title="to all 2"))
    mark_all_read(users["alice"].pk)  # alice: everything so far read
    made.append(publish(title="to all 3"))
    mark_read(users["bob"].pk, made[-1].id)
    made.append(publish(title="to ops again", audience={"groups": ["ops"]}))
    return [n.id for n in made]


@pytest.mark.parametrize("limit", [200, 1, 2, 3])
def test_each_viewer_gets_what_its_own_replay_sends(users, history, limit):
    first = history[0]
    resuming = [
        (load_viewer(users[name].pk), after)
        for name, after in [
            ("alice", first),
            ("bob", first),
            ("carol", first),
            ("admin", first),
            ("bob", 0),
            ("alice", history[-3]),
        ]
    ]

    replays = replay_openings(resuming, limit)

    for (viewer, after), replayed in zip(resuming, replays, strict=True):
        # Its first batch, then on from where it is complete through.
        assert replayed.count <= limit
        assert replayed.through >= after
        sent = replayed.frames + _alone(viewer, replayed.through, limit)
        assert sent == _alone(viewer, after, limit), (viewer, after)
        assert replayed.count == replayed.frames.count(b"event: notification\n")


def test_a_viewer_that_sees_nothing_new_stays_at_its_cursor(users, history):
    carol = load_viewer(users["carol"].pk)
    publish(title="to ops, not carol", audience={"groups": ["ops"]})

    [replayed] = replay_openings([(carol, history[-1])], 200)

    assert (replayed.frames, replayed.count, replayed.through) == (b"", 0, history[-1])


def test_read_flags_are_each_users_own(users, history):
    alice, bob = (load_viewer(users[name].pk) for name in ("alice", "bob"))
    to_all_3 = history[-2]

    replays = replay_openings([(alice, to_all_3 - 1), (bob, to_all_3 - 1)], 200)

    frames = {r.frames.split(b"\n\n")[0] for r in replays}
    assert len(frames) == 2  # the same notification, read by bob, not by alice
    assert b'"read":true' in replays[1].frames.split(b"\n\n")[0]
    assert b'"read":false' in replays[0].frames.split(b"\n\n")[0]


def test_a_storm_at_one_cursor_costs_a_few_queries_in_all(users):
    cursor = publish(title="before").id
    for i in range(5):
        publish(title=f"missed {i}")
    viewers = [load_viewer(users[name].pk) for name in ("alice", "bob", "carol")]
    resuming = [(viewers[i % 3], cursor) for i in range(60)]

    with CaptureQueriesContext(connection) as queries:
        replays = replay_openings(resuming, 200)

    # What any of them sees, the read cursors, the read marks: whoever asks.
    assert len(queries) == 3
    assert {r.count for r in replays} == {5}


def test_past_a_full_shared_read_a_viewer_reads_on_from_its_end(users):
    cursor = publish(title="before").id
    to_carol = [
        publish(title=f"carol {i}", audience={"users": ["carol"]}) for i in range(2)
    ]
    publish(title="to all")
    alice, carol = (load_viewer(users[name].pk) for name in ("alice", "carol"))

    mine, hers = replay_openings([(alice, cursor), (carol, cursor)], 2)

    # Nothing of alice's among the two rows read: she is complete through
    # them, and reads on from there, not from her cursor again.
    assert (mine.count, mine.through) == (0, to_carol[-1].id)
    assert (hers.count, hers.through) == (2, to_carol[-1].id)
