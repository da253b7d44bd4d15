"""Checks a publish request and turns it into clean values (no database)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

from django.utils import timezone
from django.utils.dateparse import parse_datetime

from notify.exceptions import ValidationError
from notify.models import Audience, Level

FIELDS = {"audience", "title", "body", "level", "url", "data", "expires_at"}
MAX_TITLE, MAX_BODY, MAX_URL, MAX_DATA = 200, 5000, 2000, 16 * 1024
MAX_NAMES = 10_000


@dataclass
class Draft:
    """A validated notification, not yet saved."""

    audience: str
    title: str
    body: str = ""
    level: str = Level.INFO
    url: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    expires_at: datetime | None = None
    usernames: list[str] = field(default_factory=list)
    group_names: list[str] = field(default_factory=list)


NOT_UNICODE = "Must be valid Unicode text (no lone surrogates such as \\ud800)."
NUL = "Must not contain NUL (U+0000) characters."


def _unicode(text: str) -> bool:
    """False for strings no database can store: lone UTF-16 surrogates, which
    a JSON "\\ud800" escape or a Python caller can produce."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _storable(text: str) -> list[str]:
    """Why no database can store ``text`` (PostgreSQL refuses NUL in text and
    in JSON; SQLite would keep it), or nothing."""
    if not _unicode(text):
        return [NOT_UNICODE]
    if "\x00" in text:
        return [NUL]
    return []


def _in_jsonb_order(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object's members in the order PostgreSQL's jsonb keeps them (shorter
    keys first, then by their UTF-8 bytes), so that ``data`` reads the same
    live and from the database, on every backend."""
    return dict(sorted(pairs, key=lambda pair: (len(k := pair[0].encode()), k)))


def _jsonb_number(literal: str) -> float | int:
    """A JSON number with a fraction or an exponent as jsonb gives it back: an
    integer when no digit is left after the point once the exponent applies
    (1e+16 is 10000000000000000), else the same float; no negative zero."""
    exponent = Decimal(literal).as_tuple().exponent
    if isinstance(exponent, int) and exponent >= 0:
        return int(Decimal(literal))
    return float(literal) + 0.0  # -0.0 + 0.0 is 0.0


def _strings(value: object) -> list[str]:
    """Every string in a JSON value, keys included (no recursion: the nesting
    depth is bounded only by the size limit)."""
    found: list[str] = []
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            found.append(item)
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list | tuple):
            pending.extend(item)
    return found


def _names(value: object, what: str, errors: list[str]) -> list[str]:
    if not isinstance(value, list) or not value:
        errors.append(f"{what} must be a non-empty list of names.")
        return []
    if len(value) > MAX_NAMES:
        errors.append(f"At most {MAX_NAMES} {what}.")
        return []
    if not all(isinstance(v, str) and v.strip() for v in value):
        errors.append(f"Every entry of {what} must be a non-empty string.")
        return []
    for name in value:
        if problems := _storable(name):
            errors.extend(problems)
            return []
    return sorted(set(value))


def _audience(value: object, draft: Draft) -> list[str]:
    errors: list[str] = []
    if value == "all":
        draft.audience = Audience.ALL
    elif isinstance(value, dict) and len(value) == 1 and "users" in value:
        draft.audience = Audience.USER
        draft.usernames = _names(value["users"], "users", errors)
    elif isinstance(value, dict) and len(value) == 1 and "groups" in value:
        draft.audience = Audience.GROUP
        draft.group_names = _names(value["groups"], "groups", errors)
    else:
        errors.append('Must be "all", {"users": [...]} or {"groups": [...]}.')
    return errors


def _url(value: object) -> list[str]:
    if not isinstance(value, str):
        return ["Must be a string or null."]
    if len(value) > MAX_URL:
        return [f"At most {MAX_URL} characters."]
    if problems := _storable(value):
        return problems
    if any(c.isspace() or ord(c) < 32 for c in value):
        return ["Must not contain spaces or control characters."]
    if value.startswith("/"):
        if value.startswith(("//", "/\\")):
            return ["A path must start with exactly one '/'."]
        return []
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return ["Must be an http(s) URL or a path starting with '/'."]
    return []


def _expires(value: object, now: datetime) -> tuple[datetime | None, list[str]]:
    if isinstance(value, datetime):
        parsed: datetime | None = value
    elif isinstance(value, str):
        try:
            parsed = parse_datetime(value)
        except ValueError:
            parsed = None
    else:
        return None, ["Must be an ISO 8601 date-time string or null."]
    if parsed is None:
        return None, ["Must be an ISO 8601 date-time, e.g. 2026-11-20T22:00:00Z."]
    if timezone.is_naive(parsed):
        parsed = parsed.replace(tzinfo=UTC)
    try:
        parsed = parsed.astimezone(UTC)  # 9999-12-31T23:59-01:00 is past year 9999
    except OverflowError:
        return None, ["Out of range."]
    if parsed <= now:
        return None, ["Must be in the future."]
    return parsed, []


def validate(payload: object, *, now: datetime | None = None) -> Draft:
    """Return a :class:`Draft` or raise :class:`ValidationError` naming fields."""
    if not isinstance(payload, dict):
        raise ValidationError({"body": ["Must be a JSON object."]})
    errors: dict[str, list[str]] = {}
    for unknown in sorted(set(payload) - FIELDS):
        errors[str(unknown)] = ["Unknown field."]
    draft = Draft(audience=Audience.ALL, title="")

    if "audience" not in payload:
        errors["audience"] = ["This field is required."]
    elif problems := _audience(payload["audience"], draft):
        errors["audience"] = problems

    title = payload.get("title")
    if not isinstance(title, str) or not title.strip():
        errors["title"] = ["This field is required (1 to 200 characters)."]
    elif len(title) > MAX_TITLE:
        errors["title"] = [f"At most {MAX_TITLE} characters."]
    elif problems := _storable(title):
        errors["title"] = problems
    else:
        draft.title = title

    body = payload.get("body", "")
    if body is None:
        body = ""
    if not isinstance(body, str):
        errors["body"] = ["Must be a string."]
    elif len(body) > MAX_BODY:
        errors["body"] = [f"At most {MAX_BODY} characters."]
    elif problems := _storable(body):
        errors["body"] = problems
    else:
        draft.body = body

    level = payload.get("level", Level.INFO)
    if level not in Level.values:
        errors["level"] = [f"Must be one of: {', '.join(Level.values)}."]
    else:
        draft.level = level

    url = payload.get("url")
    if url not in (None, ""):
        if problems := _url(url):
            errors["url"] = problems
        else:
            draft.url = str(url)

    data = payload.get("data")
    if data is not None:
        if not isinstance(data, dict):
            errors["data"] = ["Must be a JSON object."]
        else:
            try:
                wire = json.dumps(
                    data, allow_nan=False, ensure_ascii=False, separators=(",", ":")
                )
            except (TypeError, ValueError):
                errors["data"] = ["Must contain only JSON values (no NaN or Infinity)."]
            else:
                if not _unicode(wire):
                    errors["data"] = [NOT_UNICODE]
                elif any("\x00" in text for text in _strings(data)):
                    errors["data"] = [NUL]
                else:
                    # As every backend stores it (jsonb's key order and numbers).
                    stored = json.loads(
                        wire,
                        parse_float=_jsonb_number,
                        object_pairs_hook=_in_jsonb_order,
                    )
                    wire = json.dumps(stored, ensure_ascii=False, separators=(",", ":"))
                    if len(wire.encode()) > MAX_DATA:
                        errors["data"] = [f"At most {MAX_DATA} bytes as JSON."]
                    else:
                        draft.data = stored

    expires = payload.get("expires_at")
    if expires is not None:
        draft.expires_at, problems = _expires(expires, now or timezone.now())
        if problems:
            errors["expires_at"] = problems

    if errors:
        raise ValidationError(errors)
    return draft
