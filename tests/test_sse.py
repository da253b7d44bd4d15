"""The SSE encoder and the wire JSON: values in, exact bytes out.

Every frame is also read back with a strict parser written from the WHATWG
HTML spec ("Server-sent events", interpreting an event stream), so a value that
could forge or split an event fails here whatever the encoder's intent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from notify import sse, wire
from notify.models import Notification
from notify.sse import ServerSentEvent

# -- a spec-conforming reader -------------------------------------------------


@dataclass
class Block:
    """The fields of one event block, in order, as the parser saw them."""

    fields: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Dispatched:
    type: str
    data: str
    last_event_id: str


@dataclass
class Parsed:
    events: list[Dispatched] = field(default_factory=list)
    blocks: list[Block] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    retry: int | None = None


def _lines(text: str) -> list[str]:
    """Complete lines; CRLF, lone CR and lone LF each end a line. An
    unterminated last line is not a line yet (the spec keeps it buffered)."""
    lines: list[str] = []
    start = i = 0
    while i < len(text):
        char = text[i]
        if char in "\r\n":
            lines.append(text[start:i])
            if char == "\r" and text[i + 1 : i + 2] == "\n":
                i += 1
            start = i + 1
        i += 1
    return lines


def parse(raw: bytes) -> Parsed:
    text = raw.decode("utf-8").removeprefix("\ufeff")
    out = Parsed()
    event_type, data, last_event_id = "", "", ""
    block = Block()
    for line in _lines(text):
        if line == "":
            if block.fields:
                out.blocks.append(block)
            block = Block()
            if data == "":
                event_type = ""
                continue
            out.events.append(
                Dispatched(
                    event_type or "message", data.removesuffix("\n"), last_event_id
                )
            )
            event_type, data = "", ""
            continue
        if line.startswith(":"):
            out.comments.append(line[1:])
            continue
        name, colon, value = line.partition(":")
        if colon:
            value = value.removeprefix(" ")
        block.fields.append((name, value))
        if name == "event":
            event_type = value
        elif name == "data":
            data += value + "\n"
        elif name == "id":
            if "\0" not in value:
                last_event_id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            out.retry = int(value)
    return out


def test_the_reader_treats_cr_lf_and_crlf_as_line_ends():
    parsed = parse(b"data: a\rdata: b\r\ndata: c\n\nevent: x\rdata: d\r\r")
    assert [(e.type, e.data) for e in parsed.events] == [
        ("message", "a\nb\nc"),
        ("x", "d"),
    ]


# -- ServerSentEvent.encode ---------------------------------------------------


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (ServerSentEvent(data="hello"), b"data: hello\n\n"),
        (ServerSentEvent(data=""), b"data: \n\n"),
        (ServerSentEvent(data="a\nb"), b"data: a\ndata: b\n\n"),
        (ServerSentEvent(data="a\rb"), b"data: a\ndata: b\n\n"),
        (ServerSentEvent(data="a\r\nb"), b"data: a\ndata: b\n\n"),
        (ServerSentEvent(data="a\n\nb"), b"data: a\ndata: \ndata: b\n\n"),
        (ServerSentEvent(data="a\r\rb"), b"data: a\ndata: \ndata: b\n\n"),
        (ServerSentEvent(data="\n"), b"data: \ndata: \n\n"),
        (ServerSentEvent(data="end\n"), b"data: end\ndata: \n\n"),
        (ServerSentEvent(data=": not a comment"), b"data: : not a comment\n\n"),
        (ServerSentEvent(data="  two spaces"), b"data:   two spaces\n\n"),
        (ServerSentEvent(data="é ✓"), "data: é ✓\n\n".encode()),
        (ServerSentEvent(event="ready"), b"event: ready\n\n"),
        (ServerSentEvent(id=7), b"id: 7\n\n"),
        (ServerSentEvent(id=0), b"id: 0\n\n"),
        (ServerSentEvent(id="abc"), b"id: abc\n\n"),
        (ServerSentEvent(retry=3000), b"retry: 3000\n\n"),
        (ServerSentEvent(retry=0), b"retry: 0\n\n"),
        (ServerSentEvent(), b"\n\n"),
        (
            ServerSentEvent(data="x", event="notification", id=42, retry=5),
            b"id: 42\nevent: notification\nretry: 5\ndata: x\n\n",
        ),
    ],
)
def test_encode_writes_exact_bytes(event, expected):
    assert event.encode() == expected


@pytest.mark.parametrize(
    ("data", "read_back"),
    [
        ("one", "one"),
        ("a\nb", "a\nb"),
        ("a\rb", "a\nb"),
        ("a\r\nb", "a\nb"),
        ("a\n\r\nb\r", "a\n\nb\n"),
        ("", ""),
    ],
)
def test_multiline_data_is_read_back_with_lf_line_ends(data, read_back):
    parsed = parse(ServerSentEvent(data=data, event="e").encode())
    assert [(e.type, e.data) for e in parsed.events] == [("e", read_back)]


@pytest.mark.parametrize("name", ["id", "event"])
@pytest.mark.parametrize(
    "value", ["a\nb", "a\rb", "a\r\nb", "\n", "x\0", "1\n\ndata: forged"]
)
def test_single_line_fields_reject_cr_lf_and_nul(name, value):
    with pytest.raises(ValueError, match=name):
        ServerSentEvent(data="x", **{name: value})


@pytest.mark.parametrize("value", [-1, 1.5, "3000", True])
def test_retry_must_be_a_non_negative_int(value):
    with pytest.raises(TypeError):
        ServerSentEvent(retry=value)


def test_retry_helper_is_a_retry_field_only():
    assert sse.retry(3000) == b"retry: 3000\n\n"
    parsed = parse(sse.retry(3000))
    assert parsed.retry == 3000
    assert parsed.events == []


# -- comments, ping, padding --------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [("", b":\n\n"), ("ping", b": ping\n\n"), ("a: b", b": a: b\n\n")],
)
def test_comment_bytes(text, expected):
    assert sse.comment(text) == expected


@pytest.mark.parametrize("text", ["a\nb", "a\rb", "a\r\n"])
def test_comment_rejects_line_breaks(text):
    with pytest.raises(ValueError):
        sse.comment(text)


def test_ping_is_a_comment_that_dispatches_nothing():
    assert sse.PING == b": ping\n\n"
    assert sse.comment("ping") == sse.PING
    parsed = parse(sse.PING)
    assert parsed.events == []
    assert parsed.comments == [" ping"]


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        (-5, b""),
        (0, b""),
        (1, b"\n"),
        (2, b":\n"),
        (3, b":\n\n"),
        (4, b": \n\n"),
        (8, b":     \n\n"),
    ],
)
def test_padding_exact_bytes(size, expected):
    assert sse.padding(size) == expected


@pytest.mark.parametrize("size", [0, 1, 2, 3, 100, 2048, 8192])
def test_padding_has_the_requested_size_and_dispatches_nothing(size):
    pad = sse.padding(size)
    assert len(pad) == size
    # Padding then an event: the client sees exactly that event.
    parsed = parse(pad + sse.retry(3000) + sse.event("ready", {"last_id": 0}))
    assert [(e.type, e.data) for e in parsed.events] == [("ready", '{"last_id":0}')]
    assert parsed.retry == 3000


# -- named JSON events --------------------------------------------------------


def test_event_encodes_compact_json_on_one_data_line():
    assert sse.event("read", {"ids": [1, 2]}) == b'event: read\ndata: {"ids":[1,2]}\n\n'
    assert (
        sse.event("notification", {"id": 5}, id=5)
        == b'id: 5\nevent: notification\ndata: {"id":5}\n\n'
    )


def test_read_frame_is_an_event_without_an_id():
    assert wire.read_frame({"all": True, "up_to": 9}) == (
        b'event: read\ndata: {"all":true,"up_to":9}\n\n'
    )


def test_dumps_keeps_non_ascii_and_escapes_control_characters():
    assert sse.dumps({"t": "é\n\r\0\u2028"}) == '{"t":"é\\n\\r\\u0000\u2028"}'


# -- wire JSON ----------------------------------------------------------------


def _notification(**fields: Any) -> Notification:
    values: dict[str, Any] = {
        "id": 42,
        "level": "info",
        "title": "Deploy at 5",
        "body": "The site may blink.",
        "url": None,
        "data": {},
        "audience": "all",
        "created_at": datetime(2026, 11, 20, 22, 0, tzinfo=UTC),
        "expires_at": None,
    }
    values.update(fields)
    return Notification(**values)


def test_wire_json_has_the_contract_key_order_and_compact_form():
    assert sse.dumps(wire.to_wire(_notification())) == (
        '{"id":42,"level":"info","title":"Deploy at 5","body":"The site may blink.",'
        '"url":null,"data":{},"audience":"all","created_at":"2026-11-20T22:00:00Z",'
        '"expires_at":null,"read":false}'
    )


def test_wire_json_in_utc_without_microseconds_and_with_read_state():
    plus_two = timezone(timedelta(hours=2))
    n = _notification(
        level="critical",
        audience="group",
        url="/inbox/",
        data={"k": [1]},
        created_at=datetime(2026, 11, 21, 0, 0, 1, 999999, tzinfo=plus_two),
        expires_at=datetime(2026, 11, 21, 22, 0, tzinfo=UTC),
    )
    assert sse.dumps(wire.to_wire(n, read=True)) == (
        '{"id":42,"level":"critical","title":"Deploy at 5","body":"The site may blink.",'
        '"url":"/inbox/","data":{"k":[1]},"audience":"group",'
        '"created_at":"2026-11-20T22:00:01Z","expires_at":"2026-11-21T22:00:00Z",'
        '"read":true}'
    )


def test_wire_json_sends_an_empty_url_as_null():
    assert wire.to_wire(_notification(url=""))["url"] is None


def test_notification_frame_exact_bytes():
    assert wire.frame(_notification(title="Hi", body="")) == (
        b'id: 42\nevent: notification\ndata: {"id":42,"level":"info","title":"Hi",'
        b'"body":"","url":null,"data":{},"audience":"all",'
        b'"created_at":"2026-11-20T22:00:00Z","expires_at":null,"read":false}\n\n'
    )


def test_broker_message_carries_the_frame_and_expiry():
    expires = datetime(2026, 11, 21, 22, 0, tzinfo=UTC)
    n = _notification(audience="user", expires_at=expires)
    message = wire.message(n, [3, 1, 3], [])
    assert message.id == 42
    assert message.channels == ("user:1", "user:3")
    assert message.frame == wire.frame(n)
    assert message.expires_at == expires.timestamp()


# -- injection ----------------------------------------------------------------

HOSTILE = [
    "line\nbreak",
    "carriage\rreturn",
    "crlf\r\nhere",
    "\n\ndata: forged",
    "\r\nid: 999",
    "\r\n\r\nevent: read\r\ndata: {}\r\n\r\n",
    "nul\0byte",
    ": comment?\n:",
    "\u2028\u2029\x85\x0b\x0c",
    "retry: 1\n\nretry: 2",
]


@pytest.mark.parametrize("hostile", HOSTILE)
def test_hostile_field_values_make_exactly_one_intact_event(hostile):
    n = _notification(
        title=hostile,
        body=f"before {hostile} after",
        url=f"/x?{hostile}",
        data={hostile: hostile, "nested": [hostile, {"k": hostile}]},
    )
    frame = wire.frame(n)

    assert frame.endswith(b"\n\n")
    assert b"\r" not in frame
    assert b"\0" not in frame
    assert frame.count(b"\n") == 4  # three field lines and the blank line

    parsed = parse(frame)
    assert len(parsed.events) == 1
    assert [name for name, _ in parsed.blocks[0].fields] == ["id", "event", "data"]
    assert parsed.retry is None
    assert parsed.comments == []
    (event,) = parsed.events
    assert event.type == "notification"
    assert event.last_event_id == "42"
    got = json.loads(event.data)
    assert got == wire.to_wire(n)
    assert got["title"] == hostile
    assert got["body"] == f"before {hostile} after"
    assert got["data"] == {hostile: hostile, "nested": [hostile, {"k": hostile}]}


@pytest.mark.parametrize("hostile", HOSTILE)
def test_hostile_values_in_a_stream_of_frames_do_not_shift_event_boundaries(hostile):
    frames = [
        wire.frame(_notification(id=i, title=f"{hostile}{i}", body=hostile))
        for i in (1, 2, 3)
    ]
    parsed = parse(sse.PING + b"".join(frames) + wire.read_frame({"ids": [1]}))
    assert [(e.type, e.last_event_id) for e in parsed.events] == [
        ("notification", "1"),
        ("notification", "2"),
        ("notification", "3"),
        ("read", "3"),
    ]
    assert [json.loads(e.data)["title"] for e in parsed.events[:3]] == [
        f"{hostile}1",
        f"{hostile}2",
        f"{hostile}3",
    ]
