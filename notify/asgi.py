"""Django's ASGI handler, without the thread and the two tasks per open stream.

Stock Django enters a fresh ``ThreadSensitiveContext`` for every request. The
first ``sync_to_async`` call inside it (the ``request_started`` receivers,
session and auth middleware, the ORM) creates a one-thread executor that lives
until the response ends, so every open event stream pins a thread, and with it
that thread's database connection. Here each request instead enters a context
bound to one of a small pool of single-thread executors (asgiref's
``ThreadSensitiveContext(executor=)``), chosen at its first synchronous call
so that a thread waiting for a database lock is passed over
(``notify/workers.py``); Django's own inner context reuses it. Sync work of a
request still runs on one thread, as Django expects, but threads and database
connections stay at ``NOTIFY_SYNC_THREADS`` however many streams are open.

Stock Django also runs each request in two extra tasks (the view and its
response, and a listener for ``http.disconnect``) raced with ``asyncio.wait``,
and wraps every streamed part in a chunking generator and a new message. Held
for hours by thousands of open streams, that is about a sixth of a stream's
memory and a third of the CPU of a broadcast (docs/PERFORMANCE.md). Here the request
runs in the connection's own task, the same middleware, view and response as
ever, watched by one small task that cancels it when the client leaves; a
streamed part is sent as it is unless it is larger than ``chunk_size``.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import io
import logging
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor, Future
from typing import Any

import django
from asgiref.sync import (
    AsyncToSync,
    SyncToAsync,
    ThreadSensitiveContext,
    sync_to_async,
)
from django.conf import settings
from django.core import signals
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.dispatch.dispatcher import NO_RECEIVERS
from django.http import HttpResponseBase
from django.urls import get_script_prefix as get_current_script_prefix
from django.urls import get_urlconf, set_script_prefix, set_urlconf
from django.utils.log import log_response

from notify import draining
from notify.bodylimit import (
    BodyTooLargeError,
    body_limit,
    declared_too_large,
    limited,
    refuse,
)
from notify.broker import is_serving, serving
from notify.pruning import start_pruner
from notify.workers import WorkerPool

logger = logging.getLogger(__name__)


class _DisconnectWatcher:
    """Cancels ``task`` when the client disconnects, until stopped.

    A small task of its own, as ``receive()`` may need one: an ASGI server
    may hand back any awaitable, and what wraps ``receive()`` (tracing,
    timeouts) may keep context variables or use ``asyncio.current_task()``
    across its awaits.
    """

    __slots__ = ("fired", "_stopped", "_target", "_task")

    def __init__(self, receive: Any, task: asyncio.Task[Any]) -> None:
        self.fired = False
        self._stopped = False
        self._target = task
        self._task = asyncio.create_task(self._watch(receive))

    async def _watch(self, receive: Any) -> None:
        try:
            # The request body has been read: all that can come now is the end.
            while (await receive())["type"] != "http.disconnect":
                pass
        except Exception:
            logger.exception("waiting for the client to leave failed")
            return
        if not self._stopped:
            self.fired = True
            self._target.cancel()

    def stop(self) -> None:
        self._stopped = True
        self._task.cancel()


class _RequestContext(ThreadSensitiveContext):
    """``ThreadSensitiveContext(executor=...)``, entered without setting
    ``AsyncToSync.executors.current`` to None when it is unset already, as it
    is in every request uvicorn starts (asgiref reads it with ``getattr(...,
    None)``, so unset and None are the same). Each write to asgiref's
    ``Local`` copies its storage into the request's context: about 0.3 KiB
    that a stream keeps for hours. ``tests/test_canary.py`` guards the
    asgiref code this mirrors."""

    async def __aenter__(self) -> _RequestContext:
        executor = self._executor
        if executor is None or getattr(AsyncToSync.executors, "current", None):
            await super().__aenter__()  # type: ignore[no-untyped-call]
            return self
        if self.token is not None:
            raise RuntimeError("ThreadSensitiveContext is already entered")
        if self._exited:
            raise RuntimeError(
                "ThreadSensitiveContext with an executor cannot be entered again"
            )
        self.token = SyncToAsync.thread_sensitive_context.set(self)
        SyncToAsync.context_to_thread_executor[self] = executor
        return self


class _RequestExecutor(Executor):
    """One request's view of its worker thread.

    ``request_started`` has synchronous receivers (Django's own close stale
    database connections and clear the query log of the thread's
    connections). Sending the signal as Django does costs the request a trip
    to its thread of its own before the view runs, about a quarter of the CPU
    of opening a stream (docs/PERFORMANCE.md). Here those receivers run on the
    same thread, in the same order, as a work item queued just ahead of the
    request's first synchronous call instead: before any of its database
    work, and at the latest when the response is closed. (The receivers are
    looked up then, not when the request started.)
    """

    __slots__ = ("_executor", "_pending", "_pick")

    def __init__(self, pick: Callable[[], Executor]) -> None:
        # The thread is chosen at the first call (notify/workers.py).
        self._executor: Executor | None = None
        self._pick = pick
        # (sender, scope) of a request_started whose sync receivers are due:
        # a stream keeps this for hours, so no closure, just the two.
        self._pending: tuple[type, Any] | None = None

    def defer_started(self, sender: type, scope: Any) -> None:
        self._pending = (sender, scope)

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        executor = self._executor
        if executor is None:
            executor = self._executor = self._pick()
        pending, self._pending = self._pending, None
        if pending is None:
            return executor.submit(fn, *args, **kwargs)
        # A work item of its own, ahead of ``fn`` on the same single thread:
        # if the caller is cancelled before ``fn`` starts, the receivers still
        # run. Their failure is the call's failure, as with Django's asend().
        started = executor.submit(_send_started_sync, *pending)
        return executor.submit(_after, started, fn, args, kwargs)


def _after(started: Future[Any], fn: Any, args: Any, kwargs: Any) -> Any:
    started.result()
    return fn(*args, **kwargs)


def _send_started_sync(sender: type, scope: Any) -> None:
    signal = signals.request_started
    for receiver in signal._live_receivers(sender)[0]:
        receiver(signal=signal, sender=sender, scope=scope)


async def send_request_started(
    sender: type, scope: Any, executor: _RequestExecutor
) -> None:
    """``request_started.asend()``, with the synchronous receivers deferred
    to the request's first call on its thread (see :class:`_RequestExecutor`).
    ``tests/test_canary.py`` guards the ``Signal.asend`` this mirrors."""
    signal = signals.request_started
    if (
        not signal.receivers
        or signal.sender_receivers_cache.get(sender) is NO_RECEIVERS
    ):
        return
    sync_receivers, async_receivers = signal._live_receivers(sender)
    if async_receivers:
        # Django's own order then (since 6.0: the synchronous receivers, then
        # the asynchronous ones together); none of Django's is asynchronous.
        await signal.asend(sender=sender, scope=scope)
    elif sync_receivers:
        executor.defer_started(sender, scope)


class ThreadPoolASGIHandler(ASGIHandler):
    def __init__(self, threads: int) -> None:
        super().__init__()
        self.workers = WorkerPool(threads)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP, not {scope['type']}.")
        if not is_serving():
            serving()
            start_pruner()
            draining.install()
        executor = _RequestExecutor(self.workers.pick)
        async with _RequestContext(executor=executor):
            await self.handle(scope, receive, send, executor)

    async def get_response_async(self, request: Any) -> Any:
        """``BaseHandler.get_response_async``, without giving every request's
        context its own copy of the URLconf storage when it would only hold
        the default (``None`` means ``ROOT_URLCONF`` to the resolver): a
        stream keeps its context for hours."""
        if get_urlconf() not in (None, settings.ROOT_URLCONF):
            set_urlconf(settings.ROOT_URLCONF)
        response = await self._middleware_chain(request)  # type: ignore[attr-defined]
        response._resource_closers.append(request.close)
        if response.status_code >= 400:
            await sync_to_async(log_response, thread_sensitive=False)(
                "%s: %s",
                response.reason_phrase,
                request.path,
                response=response,
                request=request,
            )
        return response

    async def read_body(self, receive: Any, limit: int | None = None) -> Any:
        """The request body, in memory when it came in one message (every GET
        and small POST) rather than in a spooled temporary file."""
        receive = limited(receive, limit)
        first = await receive()
        if first["type"] == "http.request" and not first.get("more_body", False):
            body = first.get("body", b"")
            if len(body) <= settings.FILE_UPLOAD_MAX_MEMORY_SIZE:
                return io.BytesIO(body)
        pending = [first]

        async def replay() -> Any:
            return pending.pop() if pending else await receive()

        return await super().read_body(replay)

    async def handle(  # type: ignore[override]
        self, scope: Any, receive: Any, send: Any, executor: _RequestExecutor
    ) -> None:
        """``ASGIHandler.handle``, with the request in the calling task."""
        limit = body_limit(scope)
        if declared_too_large(scope, limit):
            await refuse(send)
            return
        try:
            body_file = await self.read_body(receive, limit)
        except RequestAborted:
            return
        except BodyTooLargeError:
            await refuse(send)
            return
        prefix = get_script_prefix(scope)
        if prefix.rstrip("/") + "/" != get_current_script_prefix():
            # Setting it as Django does gives every request's context its own
            # copy of the URL prefix storage, kept as long as the request:
            # hours, for a stream.
            set_script_prefix(prefix)
        await send_request_started(self.__class__, scope, executor)
        request, error_response = self.create_request(scope, body_file)
        if request is None:
            assert error_response is not None  # one or the other
            body_file.close()
            await self.send_response(error_response, send)
            await sync_to_async(error_response.close)()
            return

        task = asyncio.current_task()
        assert task is not None
        watcher = _DisconnectWatcher(receive, task)
        response: HttpResponseBase | None = None
        try:
            response = await self.run_get_response(request)
            del request  # a stream may stay open for hours
            if not response.streaming:
                await self.send_response(response, send)
            else:
                # Django's send_response for a streamed body, here in this
                # frame rather than in a coroutine of its own that a stream
                # would keep for hours.
                body_file.close()  # read already
                await send(_start_message(response))
                limit = self.chunk_size
                content: AsyncIterator[bytes] = aiter(response)  # type: ignore[arg-type]
                try:
                    async for part in content:
                        if len(part) <= limit:
                            await send(
                                {
                                    "type": "http.response.body",
                                    "body": part,
                                    "more_body": True,
                                }
                            )
                            continue
                        for chunk, _ in self.chunk_bytes(part):
                            await send(
                                {
                                    "type": "http.response.body",
                                    "body": chunk,
                                    "more_body": True,
                                }
                            )
                finally:
                    aclose = getattr(content, "aclose", None)
                    if aclose is not None:
                        await aclose()
                await send({"type": "http.response.body"})
        except asyncio.CancelledError:
            # The client left; or, once there is a response, something ended
            # it on purpose (a stream too far behind, a server shutting down):
            # either way this response is over, and so is the request.
            if not watcher.fired and response is None:
                body_file.close()
                raise
            task.uncancel()
        finally:
            watcher.stop()
        if response is None:
            await signals.request_finished.asend(sender=self.__class__)
        elif response.streaming:
            await sync_to_async(response.close)()
        else:
            # Sent already: nothing waits for its close (request_finished,
            # which closes stale database connections) but the request's
            # thread, which runs it next, in this context; the event loop is
            # spared the wake-up of a round trip.
            closing = executor.submit(contextvars.copy_context().run, response.close)
            closing.add_done_callback(_log_close_failure)
        body_file.close()


def _log_close_failure(closing: Future[Any]) -> None:
    if not closing.cancelled() and (exc := closing.exception()) is not None:
        logger.error("closing a response failed", exc_info=exc)


def _start_message(response: HttpResponseBase) -> dict[str, Any]:
    """The ``http.response.start`` message, headers encoded as Django does."""
    headers = [
        (header.encode("ascii"), value.encode("latin1"))
        for header, value in response.items()
    ]
    headers.extend(
        (b"Set-Cookie", c.output(header="").encode("ascii").strip())
        for c in response.cookies.values()
    )
    return {
        "type": "http.response.start",
        "status": response.status_code,
        "headers": headers,
    }


# Fan-out to thousands of streams allocates many short-lived objects per
# message; at CPython's default first-generation threshold (700) the cyclic
# collector then runs over and over and takes about a third of the broadcast
# CPU (docs/PERFORMANCE.md). A deployment that set its own threshold keeps it.
# What exists once the application is loaded (modules, settings, URL
# patterns, middleware: some 100,000 objects) lives as long as the process, so
# it is moved out of the collector's sight and full collections, which walk
# every tracked object, only walk what the requests and streams created.
_GC_DEFAULT, _GC_SERVER = (700, 10, 10), (7000, 10, 10)


def get_asgi_application() -> ThreadPoolASGIHandler:
    if gc.get_threshold() == _GC_DEFAULT:
        gc.set_threshold(*_GC_SERVER)
    django.setup(set_prefix=False)
    from notify.conf import conf

    handler = ThreadPoolASGIHandler(conf.sync_threads)
    gc.collect()
    gc.freeze()
    return handler
