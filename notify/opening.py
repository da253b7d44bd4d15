"""What a new stream needs from the database, read on a thread of its own.

Who is asking (:mod:`notify.credentials`), their groups, the newest
notification they can see, the newest one of all, and whether their cursor is
still inside retention: a handful of queries compiled once per process
(:mod:`notify.prepared`) and run together, so opening a stream costs no ORM
compilation.

A reconnect storm is thousands of these at once. They run on one thread per
process (the :class:`Opener`), not on the request threads, so publish and
inbox requests never queue behind them; openings that arrive together run in
one trip to that thread, which spares each one a hand-off between threads;
and past ``NOTIFY_OPEN_BACKLOG`` waiting openings a new one is refused at once
(503 with ``Retry-After``) instead of waiting without bound.
"""

from __future__ import annotations

import asyncio
import contextvars
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, TypeVar

from django.db import close_old_connections, connections
from django.db.models import BooleanField, Case, Q, Value, When
from django.http import HttpRequest
from django.utils import timezone

from notify.conf import conf
from notify.credentials import Identity, identify_all
from notify.models import Audience, Notification, RetentionMark
from notify.prepared import Prepared, one_cursor
from notify.replay import Replayed, replay_openings
from notify.visibility import Viewer, load_viewers, newest_visible_id

CURSOR_EXPIRED = "cursor-expired"
CURSOR_AHEAD = "cursor-ahead"


@dataclass(frozen=True, slots=True)
class Opening:
    """Where a stream starts.

    ``newest``: the newest id this viewer can see; ``latest``: the newest
    committed id of all (read in the same hop, so a stream can tell whether
    anything was committed between this read and its subscription);
    ``cursor``: where the stream resumes from (None: only what comes next);
    ``reset``: why the client's cursor was not taken as it is;
    ``credential`` and ``expires``: see :class:`Identity`;
    ``replayed``: a resuming stream's first replay, read with its opening.
    """

    viewer: Viewer
    newest: int
    latest: int
    cursor: int | None
    reset: str | None = None
    credential: int | str | None = field(default=None, repr=False)
    expires: float | None = None
    replayed: Replayed | None = field(default=None, repr=False)

    @property
    def last_id(self) -> int:
        """The ``ready`` event's ``last_id``."""
        return max(self.newest, self.cursor or 0)


_LATEST = Prepared(
    lambda: Notification.objects.order_by("-id").values_list("id")[:1], []
)


def latest_id() -> int:
    """The newest committed notification id (0 when there is none)."""
    return int(_LATEST.value(default=0))


# The newest row, and whether everyone may see it at ``now``: what lets a
# batch of openings skip every viewer's own newest-id query after a broadcast.
_NEWEST_ROW = Prepared(
    lambda now: (
        Notification.objects.order_by("-id")
        .annotate(
            to_all=Case(
                When(
                    Q(audience=Audience.ALL)
                    & (Q(expires_at__isnull=True) | Q(expires_at__gt=now)),
                    then=Value(True),
                ),
                default=Value(False),
                output_field=BooleanField(),
            )
        )
        .values_list("id", "to_all")[:1]
    ),
    [datetime],
)

_PRUNED_THROUGH = Prepared(
    lambda: RetentionMark.objects.filter(pk=1).values_list("pruned_through"), []
)


class _Reads:
    """What every opening of a batch shares: the newest id of all, read once
    before any viewer's newest (see :func:`_start`), and the retention mark,
    read when a cursor first needs it."""

    __slots__ = ("_latest", "_to_all", "_pruned_through")

    def __init__(self) -> None:
        self._latest: int | None = None
        self._to_all = False  # the newest row is to everyone, unexpired
        self._pruned_through: int | None = None

    @property
    def latest(self) -> int:
        if self._latest is None:
            rows = _NEWEST_ROW.rows(timezone.now())
            if rows:
                self._latest, self._to_all = int(rows[0][0]), bool(rows[0][1])
            else:
                self._latest = 0
        return self._latest

    def newest_for(self, user_id: int) -> int:
        """:func:`newest_visible_id` for ``user_id``, read after
        :attr:`latest`. When the newest row of all is to everyone and was
        unexpired then, it is everyone's newest, and no query is needed:
        after a broadcast, as every stream of a reconnect storm opens."""
        latest = self.latest
        return latest if self._to_all else newest_visible_id(user_id)

    @property
    def pruned_through(self) -> int:
        if self._pruned_through is None:
            self._pruned_through = int(_PRUNED_THROUGH.value(default=0))
        return self._pruned_through


def open_stream(
    request: HttpRequest, cursor: int | None
) -> tuple[Identity, Opening | None]:
    """Authenticate the request and find where its stream starts; the
    opening is None when nobody is authenticated."""
    [(ok, found)] = open_streams([(request, cursor)])
    if not ok:
        raise found
    return found  # type: ignore[no-any-return]


def open_streams(
    items: Sequence[tuple[HttpRequest, int | None]],
) -> list[tuple[bool, Any]]:
    """:func:`open_stream` for several requests, each answered on its own:
    ``(True, (identity, opening))``, or ``(False, exception)`` for one whose
    check raised. Credentials and groups are each read in one query for all
    of them, the newest id of all once, and the first replay of those behind
    their viewer's newest together (:func:`replay_openings`)."""
    identities = identify_all([request for request, _ in items])
    viewers = load_viewers(
        {i.user_id for i in identities if isinstance(i, Identity) and i.user_id}
    )
    reads = _Reads()
    results: list[tuple[bool, Any]] = []
    for identity, (_, cursor) in zip(identities, items, strict=True):
        if isinstance(identity, Exception):
            results.append((False, identity))
        elif not identity.user_id:
            results.append((True, (identity, None)))
        else:
            try:
                viewer = viewers[identity.user_id]
                opening = _start(identity, viewer, cursor, reads)
            except Exception as exc:
                results.append((False, exc))
            else:
                results.append((True, (identity, opening)))
    _replay_behind(results)
    return results


def _replay_behind(results: list[tuple[bool, Any]]) -> None:
    """Give each opening whose cursor is behind its first replay."""
    behind = []
    for index, (ok, found) in enumerate(results):
        if ok:
            identity, opening = found
            if (
                opening
                and opening.cursor is not None
                and opening.cursor < opening.newest
            ):
                behind.append((index, identity, opening))
    if not behind:
        return
    wanted = [(opening.viewer, opening.cursor) for _, _, opening in behind]
    try:
        replays = replay_openings(wanted, conf.replay_batch)
    except Exception as exc:
        for index, _, _ in behind:
            results[index] = (False, exc)
        return
    for (index, identity, opening), replayed in zip(behind, replays, strict=True):
        results[index] = (True, (identity, replace(opening, replayed=replayed)))


def _start(
    identity: Identity, viewer: Viewer, cursor: int | None, reads: _Reads
) -> Opening:
    # The newest of all first: each read is its own snapshot, and an id
    # committed between them must be above ``latest`` (then a stream that
    # sees it dispatched reads the database) or at most ``newest``. A batch
    # reads ``latest`` once, before the first of its viewers' newest ids.
    latest = reads.latest
    newest = reads.newest_for(identity.user_id)
    reset = None
    if cursor is not None and cursor > latest:
        # A restored database, or another deployment's id: start from now.
        reset, cursor = CURSOR_AHEAD, None
    elif cursor and cursor < reads.pruned_through:
        reset, cursor = CURSOR_EXPIRED, 0
    return Opening(
        viewer, newest, latest, cursor, reset, identity.credential, identity.expires
    )


_BATCH = 64
T = TypeVar("T")


def _fresh(fn: Callable[..., T], *args: Any) -> T:
    close_old_connections()
    return fn(*args)


class OpenerBusyError(Exception):
    """Too many openings are waiting already."""


def _open_batch(
    items: list[tuple[HttpRequest, int | None]],
) -> list[tuple[bool, Any]]:
    # What request_started does for a request's thread: drop a connection
    # that broke or grew too old before using it.
    close_old_connections()
    with one_cursor():
        return open_streams(items)


class Opener:
    """Runs :func:`open_stream` for one event loop, in batches, on one thread."""

    def __init__(self, backlog: int) -> None:
        self.backlog = backlog
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="notify-open")
        self._pending: list[
            tuple[
                HttpRequest, int | None, asyncio.Future[tuple[Identity, Opening | None]]
            ]
        ] = []
        self._task: asyncio.Task[None] | None = None
        self.waiting = 0  # openings queued or being read

    async def open(
        self, request: HttpRequest, cursor: int | None
    ) -> tuple[Identity, Opening | None]:
        if self.waiting >= self.backlog:
            raise OpenerBusyError
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[Identity, Opening | None]] = loop.create_future()
        self._pending.append((request, cursor, future))
        if self._task is None:
            # Not the request's task or context: the batch outlives any one
            # request, and must not run in a request's thread-sensitive context.
            self._task = loop.create_task(self._drain(), context=contextvars.Context())
        self.waiting += 1
        try:
            return await future
        finally:
            self.waiting -= 1

    async def run(self, fn: Callable[..., T], /, *args: Any) -> T:
        """Run other database work on this thread (see notify.access)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, _fresh, fn, *args)

    async def aclose(self) -> None:
        """Close the thread's database connection and stop the thread."""
        if self._task is not None:
            await asyncio.wait([self._task])
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, connections.close_all)
        self._executor.shutdown(wait=False)

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                batch = [item for item in self._pending[:_BATCH] if not item[2].done()]
                del self._pending[:_BATCH]
                if not batch:
                    continue
                work = [(request, cursor) for request, cursor, _ in batch]
                try:
                    results = await loop.run_in_executor(
                        self._executor, _open_batch, work
                    )
                except Exception as exc:
                    results = [(False, exc)] * len(batch)
                for (_, _, future), (ok, value) in zip(batch, results, strict=True):
                    if future.done():
                        continue
                    if ok:
                        future.set_result(value)
                    else:
                        future.set_exception(value)
        finally:
            self._task = None


_openers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Opener] = (
    weakref.WeakKeyDictionary()
)


def forget_opener() -> Opener | None:
    """Detach the running loop's opener (the caller closes it)."""
    return _openers.pop(asyncio.get_running_loop(), None)


def get_opener() -> Opener:
    loop = asyncio.get_running_loop()
    opener = _openers.get(loop)
    if opener is None:
        opener = _openers[loop] = Opener(conf.open_backlog)
    return opener


async def aopen_stream(
    request: HttpRequest, cursor: int | None
) -> tuple[Identity, Opening | None]:
    """:func:`open_stream` through this loop's :class:`Opener`."""
    return await get_opener().open(request, cursor)
