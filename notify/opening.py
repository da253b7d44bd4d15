"""What a new stream needs from the database, read in one thread hop.

Who is asking (:mod:`notify.credentials`), their groups, the newest
notification they can see, the newest one of all, and whether their cursor is
still inside retention: a handful of queries compiled once per process
(:mod:`notify.prepared`) and run together, so opening a stream costs one trip
to a worker thread and no ORM compilation. A reconnect storm is made of these.
"""

from __future__ import annotations

from dataclasses import dataclass

from asgiref.sync import sync_to_async
from django.contrib.auth.models import Group
from django.http import HttpRequest
from django.utils import timezone

from notify.credentials import Identity, identify
from notify.history import Viewer, visible
from notify.models import Notification, RetentionMark
from notify.prepared import Prepared

CURSOR_EXPIRED = "cursor-expired"
CURSOR_AHEAD = "cursor-ahead"


@dataclass(frozen=True, slots=True)
class Opening:
    """Where a stream starts.

    ``newest``: the newest id this viewer can see; ``latest``: the newest
    committed id of all (read in the same hop, so a stream can tell whether
    anything was committed between this read and its subscription);
    ``cursor``: where the stream resumes from (None: only what comes next);
    ``reset``: why the client's cursor was not taken as it is.
    """

    viewer: Viewer
    newest: int
    latest: int
    cursor: int | None
    reset: str | None = None

    @property
    def last_id(self) -> int:
        """The ``ready`` event's ``last_id``."""
        return max(self.newest, self.cursor or 0)


_GROUPS = Prepared(
    lambda user_id: Group.objects.filter(user__id=user_id).values_list("id"), [int]
)
_NEWEST_VISIBLE = Prepared(
    lambda user_id, now: visible(user_id, now).order_by("-id").values_list("id")[:1],
    [int, type(timezone.now())],
)
_LATEST = Prepared(
    lambda: Notification.objects.order_by("-id").values_list("id")[:1], []
)
_PRUNED_THROUGH = Prepared(
    lambda: RetentionMark.objects.filter(pk=1).values_list("pruned_through"), []
)


def load_viewer(user_id: int) -> Viewer:
    return Viewer(user_id, frozenset(g for (g,) in _GROUPS.rows(user_id)))


def open_stream(
    request: HttpRequest, cursor: int | None
) -> tuple[Identity, Opening | None]:
    """Authenticate the request and find where its stream starts; the
    opening is None when nobody is authenticated."""
    identity = identify(request)
    if not identity.user_id:
        return identity, None
    user_id = identity.user_id
    viewer = load_viewer(user_id)
    newest = _NEWEST_VISIBLE.value(user_id, timezone.now(), default=0)
    latest = _LATEST.value(default=0)
    reset = None
    if cursor is not None and cursor > latest:
        # A restored database, or another deployment's id: start from now.
        reset, cursor = CURSOR_AHEAD, None
    elif cursor and cursor < _PRUNED_THROUGH.value(default=0):
        reset, cursor = CURSOR_EXPIRED, 0
    return identity, Opening(viewer, newest, latest, cursor, reset)


aopen_stream = sync_to_async(open_stream)
