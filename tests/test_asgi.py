"""The ASGI handler (notify/asgi.py): one task per request, a watcher for the
client leaving, request bodies in memory, streamed parts sent as they come."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.core import signals

from notify.asgi import _DisconnectWatcher
from notify.broker import get_broker
from notify.models import Notification
from project.asgi import application
from tests.support.asgi import ApplicationCommunicator, http_scope

WAIT = 10.0


pytestmark = pytest.mark.usefixtures("fast_password_hashing", "close_broker")


async def _response(communicator: Any) -> tuple[int, bytes]:
    start = await communicator.receive_output(timeout=WAIT)
    assert start["type"] == "http.response.start", start
    body = b""
    while True:
        message = await communicator.receive_output(timeout=WAIT)
        body += message.get("body", b"")
        if not message.get("more_body"):
            return start["status"], body


async def _publish(token: str, payload: bytes, part: int) -> tuple[int, bytes]:
    """POST ``payload`` to the publish API in messages of ``part`` bytes."""
    scope = http_scope(
        "POST",
        "/api/notifications",
        token,
        content_type="application/json",
        content_length=str(len(payload)),
    )
    communicator = ApplicationCommunicator(application, scope)
    for start in range(0, len(payload), part):
        more = start + part < len(payload)
        chunk = payload[start : start + part]
        await communicator.send_input(
            {"type": "http.request", "body": chunk, "more_body": more}
        )
    answer = await _response(communicator)
    await communicator.wait(timeout=WAIT)
    return answer


async def test_a_body_sent_in_several_messages_is_read_whole(tokens):
    fields = {"audience": "all", "title": "t" * 150, "body": "b" * 3000}
    status, body = await _publish(tokens["admin"], json.dumps(fields).encode(), 1000)
    assert status == 201, body
    note = await Notification.objects.aget()
    assert (note.title, note.body) == ("t" * 150, "b" * 3000)


async def test_a_client_leaving_during_a_long_poll_ends_the_view(tokens):
    scope = http_scope("GET", "/events/poll", tokens["bob"], query=b"timeout=50")
    communicator = ApplicationCommunicator(application, scope)
    await communicator.send_input({"type": "http.request", "body": b""})
    assert await communicator.receive_nothing(timeout=0.5)  # the poll waits
    await communicator.send_input({"type": "http.disconnect"})
    await communicator.wait(timeout=WAIT)  # well before the poll's 50 s
    assert get_broker().fanout.subscriptions == set()
    assert await communicator.receive_nothing()


async def test_cancelling_an_open_stream_ends_it_quietly(tokens):
    """A server shutting down cancels each connection's task: the stream lets
    go of its subscription and the handler returns without an error."""
    communicator = ApplicationCommunicator(
        application, http_scope("GET", "/events/", tokens["bob"])
    )
    await communicator.send_input({"type": "http.request", "body": b""})
    start = await communicator.receive_output(timeout=WAIT)
    assert start["status"] == 200
    async with asyncio.timeout(WAIT):
        while not get_broker().fanout.subscriptions:
            await communicator.receive_output(timeout=WAIT)
    communicator.future.cancel()
    await communicator.wait(timeout=WAIT)
    assert communicator.future.exception() is None
    assert get_broker().fanout.subscriptions == set()


@pytest.mark.django_db  # closing the response runs request_started's receivers
async def test_streamed_parts_are_sent_whole_up_to_the_chunk_size(settings):
    settings.ROOT_URLCONF = "tests.support.streaming_urls"
    size = application.chunk_size
    communicator = ApplicationCommunicator(
        application, http_scope("GET", "/parts", "none")
    )
    await communicator.send_input({"type": "http.request", "body": b""})
    start = await communicator.receive_output(timeout=WAIT)
    body = []
    while True:
        message = await communicator.receive_output(timeout=WAIT)
        body.append(message)
        if not message.get("more_body"):
            break
    await communicator.wait(timeout=WAIT)
    assert start["status"] == 200
    assert (b"Content-Type", b"text/plain") in start["headers"]
    assert any(
        k == b"Set-Cookie" and v.startswith(b"flavour=plain")
        for k, v in start["headers"]
    )
    assert [len(m["body"]) for m in body[:-1]] == [10, size, size, size, 5]
    assert all(m["more_body"] for m in body[:-1])
    assert body[-1] == {"type": "http.response.body"}


async def test_a_body_over_the_memory_limit_is_spooled_and_still_answered(
    tokens, settings
):
    settings.FILE_UPLOAD_MAX_MEMORY_SIZE = 1024
    payload = b'{"audience": "all", "title": "' + b"x" * 2000 + b'"}'
    status, body = await _publish(tokens["admin"], payload, len(payload))
    # Read whole from the spooled file, then judged on its content.
    assert status == 400, body
    assert "title" in json.loads(body)["errors"]


@contextlib.contextmanager
def _threads_running_request_started() -> Iterator[list[str]]:
    """The names of the threads request_started's sync receivers ran on."""
    seen: list[str] = []

    def receiver(**kwargs: Any) -> None:
        seen.append(threading.current_thread().name)

    signals.request_started.connect(receiver, dispatch_uid="test-started")
    try:
        yield seen
    finally:
        signals.request_started.disconnect(dispatch_uid="test-started")


@pytest.mark.parametrize("path", ["/events/", "/api/notifications"])
async def test_request_started_receivers_run_once_on_the_requests_thread(tokens, path):
    """Sync receivers of ``request_started`` run once per request, on the
    request's worker thread: at its first call there (for the API, before the
    response), or when the response closes (a stream opens on the opener's
    thread and does no work on its own)."""
    with _threads_running_request_started() as seen:
        communicator = ApplicationCommunicator(
            application, http_scope("GET", path, tokens["bob"])
        )
        await communicator.send_input({"type": "http.request", "body": b""})
        start = await communicator.receive_output(timeout=WAIT)
        assert start["status"] == 200
        if path.startswith("/api/"):
            assert len(seen) == 1
        communicator.future.cancel()
        await communicator.wait(timeout=WAIT)
    assert len(seen) == 1
    assert seen[0].startswith("notify-sync-")


async def _get_missing_page() -> int:
    """A view that never leaves the event loop (a 404); its status."""
    communicator = ApplicationCommunicator(
        application, http_scope("GET", "/no-such-page/", "none")
    )
    await communicator.send_input({"type": "http.request", "body": b""})
    status, _ = await _response(communicator)
    await communicator.wait(timeout=WAIT)
    return status


@pytest.mark.django_db
async def test_with_an_async_request_started_receiver_django_sends_the_signal():
    """A host's async receiver: the signal goes out as Django sends it (in
    Django's order), the sync receivers still on the request's thread."""
    order: list[str] = []

    async def async_receiver(**kwargs: Any) -> None:
        order.append("async")

    signals.request_started.connect(async_receiver, dispatch_uid="test-async")
    try:
        with _threads_running_request_started() as seen:
            status = await _get_missing_page()
    finally:
        signals.request_started.disconnect(dispatch_uid="test-async")
    assert status == 404
    assert order == ["async"]
    assert len(seen) == 1 and seen[0].startswith("notify-sync-")


async def _until(condition: Any) -> None:
    """Wait (at most ``WAIT`` s) for what a worker thread does."""

    def poll() -> None:
        deadline = time.monotonic() + WAIT
        while not condition():
            assert time.monotonic() < deadline, "timed out"
            time.sleep(0.01)

    await asyncio.to_thread(poll)


@pytest.mark.django_db
async def test_request_started_receivers_run_for_a_request_without_sync_work():
    """A view that never leaves the event loop: the deferred receivers still
    run, when the response is closed (on the request's thread, after the
    response was sent)."""
    with _threads_running_request_started() as seen:
        status = await _get_missing_page()
        await _until(lambda: seen)
    assert status == 404
    assert len(seen) == 1 and seen[0].startswith("notify-sync-")


async def test_request_finished_runs_on_the_requests_thread_after_the_response(
    tokens,
):
    """A response's close (``request_finished``: stale database connections
    closed) runs on the thread that served the request."""
    seen: list[str] = []

    def receiver(**kwargs: Any) -> None:
        seen.append(threading.current_thread().name)

    signals.request_started.connect(receiver, dispatch_uid="test-started-2")
    signals.request_finished.connect(receiver, dispatch_uid="test-finished")
    try:
        communicator = ApplicationCommunicator(
            application, http_scope("GET", "/api/notifications", tokens["bob"])
        )
        await communicator.send_input({"type": "http.request", "body": b""})
        status, _ = await _response(communicator)
        await communicator.wait(timeout=WAIT)
        await _until(lambda: len(seen) == 2)
    finally:
        signals.request_started.disconnect(dispatch_uid="test-started-2")
        signals.request_finished.disconnect(dispatch_uid="test-finished")
    assert status == 200
    started_on, finished_on = seen
    assert finished_on == started_on and finished_on.startswith("notify-sync-")


async def test_the_disconnect_watcher_cancels_its_task_when_the_client_leaves():
    messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def receive() -> dict[str, Any]:
        await asyncio.sleep(0)
        return await messages.get()

    target = asyncio.create_task(asyncio.sleep(10))
    watcher = _DisconnectWatcher(receive, target)
    messages.put_nowait({"type": "http.request", "body": b"", "more_body": False})
    await asyncio.sleep(0.01)
    assert not target.done()
    messages.put_nowait({"type": "http.disconnect"})
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(target, 1)
    assert watcher.fired
    watcher.stop()


async def test_a_stopped_disconnect_watcher_stops_waiting_and_cancels_nothing():
    messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    target = asyncio.create_task(asyncio.sleep(10))
    watcher = _DisconnectWatcher(messages.get, target)
    await asyncio.sleep(0.01)
    assert len(messages._getters) == 1  # type: ignore[attr-defined]
    watcher.stop()
    await asyncio.sleep(0.01)
    assert not messages._getters  # type: ignore[attr-defined]
    messages.put_nowait({"type": "http.disconnect"})
    await asyncio.sleep(0.01)
    assert not watcher.fired and not target.done()
    target.cancel()


async def test_a_failing_receive_is_logged_and_cancels_nothing(caplog):
    async def receive() -> dict[str, Any]:
        raise OSError("gone")

    target = asyncio.create_task(asyncio.sleep(10))
    watcher = _DisconnectWatcher(receive, target)
    await asyncio.sleep(0.01)
    assert "waiting for the client to leave failed" in caplog.text
    assert not watcher.fired and not target.done()
    watcher.stop()
    target.cancel()


_TRACE: contextvars.ContextVar[str] = contextvars.ContextVar("trace")


def _receivers(messages: asyncio.Queue[dict[str, Any]]) -> dict[str, Any]:
    """``receive`` callables as servers and wrappers other than uvicorn's
    shape them."""

    def a_future() -> asyncio.Future[dict[str, Any]]:
        # A server whose receive() is not a coroutine function.
        return asyncio.ensure_future(messages.get())

    async def keeps_a_context_variable() -> dict[str, Any]:
        # A tracing wrapper: set before the await, reset after it.
        token = _TRACE.set("span")
        try:
            return await messages.get()
        finally:
            _TRACE.reset(token)

    async def with_a_timeout() -> dict[str, Any]:
        async with asyncio.timeout(30):  # needs asyncio.current_task()
            return await messages.get()

    return {
        "future": a_future,
        "context variable": keeps_a_context_variable,
        "timeout": with_a_timeout,
    }


@pytest.mark.parametrize("kind", ["future", "context variable", "timeout"])
async def test_the_disconnect_watcher_works_with_any_receive(kind, caplog):
    messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    target = asyncio.create_task(asyncio.sleep(10))
    watcher = _DisconnectWatcher(_receivers(messages)[kind], target)
    messages.put_nowait({"type": "http.request", "body": b"", "more_body": False})
    await asyncio.sleep(0.01)
    messages.put_nowait({"type": "http.disconnect"})
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(target, 1)
    assert watcher.fired
    assert "failed" not in caplog.text
    watcher.stop()
