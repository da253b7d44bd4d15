"""ORM queries compiled once per process and run with fresh parameters.

Building a queryset and compiling it to SQL costs far more than running it:
the newest-visible-id query takes about 1.3 ms to compile and 25 µs to run on
SQLite (docs/PERFORMANCE.md). Opening a stream runs a handful of such queries
that differ only in their parameters, so :class:`Prepared` builds each one once
with marker values, keeps its SQL, and later swaps the markers for real values
in the parameter list. The query is still written with the ORM, for every
database backend, and the SQL is whatever Django generated for it.

Rows become model instances the way a queryset makes them (each column through
its field's converters, then ``Model.from_db``), without building a queryset
per run: ``tests/test_canary.py`` guards the Django code this mirrors.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connections
from django.db.models import QuerySet
from django.db.models.query import ModelIterable

# Markers: values no real query would carry, distinct per argument.
_INT_BASE = -(2**31) + 7919  # in range of a 32-bit column (PostgreSQL integer)
_TIME_BASE = datetime(1901, 2, 3, 4, 5, 6, tzinfo=UTC)


def _marker(index: int, kind: type) -> Any:
    if kind is int:
        return _INT_BASE - index
    if kind is str:
        return f"\x01notify-marker-{index}\x01"
    if kind is datetime:
        return _TIME_BASE + timedelta(seconds=index)
    raise TypeError(f"no marker for {kind!r}")


@dataclass(frozen=True, slots=True)
class _Part:
    """The columns of one model in a row: ``start:end``, named ``attnames``;
    ``field`` is the foreign key that reaches it (None for the main model)."""

    model: Any
    start: int
    end: int
    attnames: list[str]
    pk: int  # the primary key's index in ``attnames``
    field: Any = None


@dataclass(frozen=True, slots=True)
class _Compiled:
    sql: str
    params: list[Any]
    slots: list[tuple[int, int]]  # (position in params, argument)
    # Model rows only: the model and the models it selects with it, and per
    # column the field converters (database-specific, then the field's own).
    parts: list[_Part]
    converters: list[tuple[int, list[Any], Any]]


def _parts(compiler: Any) -> list[_Part]:
    """Where each model's columns are, as ``ModelIterable`` finds them
    (``select_related`` one level deep)."""
    info = compiler.klass_info
    if info is None:
        return []
    parts = []
    for part, field in [(info, None)] + [
        (related, related["field"]) for related in info.get("related_klass_infos", ())
    ]:
        if part.get("related_klass_infos") and field is not None:
            raise ValueError("select_related deeper than one level")
        if part.get("reverse"):
            raise ValueError("reverse select_related is not supported")
        fields = part["select_fields"]
        start, end = fields[0], fields[-1] + 1
        attnames = [col.target.attname for col, _, _ in compiler.select[start:end]]
        pk = attnames.index(part["model"]._meta.pk.attname)
        parts.append(_Part(part["model"], start, end, attnames, pk, field))
    if sum(part.end - part.start for part in parts) != len(compiler.select):
        raise ValueError("annotated columns are not supported")
    return parts


class _Shared(threading.local):
    def __init__(self) -> None:
        self.cursors: dict[str, Any] = {}


_shared = _Shared()


@contextmanager
def one_cursor(using: str = DEFAULT_DB_ALIAS) -> Iterator[None]:
    """Run this thread's prepared queries on ``using``, inside the block, on
    one cursor rather than a new one each: creating and closing a cursor
    through Django's wrappers costs about as much Python as running a
    prepared query, and a reconnect storm runs thousands of them in a row."""
    if using in _shared.cursors:
        yield
        return
    with connections[using].cursor() as cursor:
        _shared.cursors[using] = cursor
        try:
            yield
        finally:
            del _shared.cursors[using]


class Prepared:
    """``build(*args)`` returns a queryset; ``rows(*args)`` runs its SQL.

    ``kinds`` gives each argument's type (``int``, ``str`` or ``datetime``).
    Every argument must reach the SQL as exactly one parameter each time it is
    used (no ``__in`` lists); the first run checks that each marker was found.
    """

    def __init__(
        self,
        build: Callable[..., QuerySet[Any, Any]],
        kinds: Sequence[type],
        using: str = DEFAULT_DB_ALIAS,
    ) -> None:
        self._build = build
        self._kinds = tuple(kinds)
        self._using = using
        self._compiled: dict[str, _Compiled] = {}

    def _compile(self) -> _Compiled:
        connection = connections[self._using]
        markers = [_marker(i, kind) for i, kind in enumerate(self._kinds)]
        queryset = self._build(*markers).using(self._using)
        compiler = queryset.query.get_compiler(using=self._using)
        sql, params = compiler.as_sql()
        adapt = connection.ops.adapt_datetimefield_value
        forms: dict[Any, int] = {}
        for i, marker in enumerate(markers):
            forms[marker] = i
            if isinstance(marker, datetime):
                forms[adapt(marker)] = i
        slots: list[tuple[int, int]] = []
        for position, value in enumerate(params):
            try:
                arg = forms.get(value)
            except TypeError:  # an unhashable parameter is a constant
                continue
            if arg is not None:
                slots.append((position, arg))
        missing = set(range(len(markers))) - {arg for _, arg in slots}
        if missing:
            raise ValueError(f"arguments {sorted(missing)} do not reach the SQL")
        parts: list[_Part] = []
        converters: dict[int, tuple[list[Any], Any]] = {}
        if queryset._iterable_class is ModelIterable:  # rows() needs neither
            parts = _parts(compiler)
            converters = compiler.get_converters([col for col, _, _ in compiler.select])
        compiled = _Compiled(
            sql,
            list(params),
            slots,
            parts,
            [(i, funcs, expr) for i, (funcs, expr) in sorted(converters.items())],
        )
        self._compiled[connection.vendor] = compiled
        return compiled

    def _prepared(self, connection: Any) -> _Compiled:
        return self._compiled.get(connection.vendor) or self._compile()

    def _run(
        self, connection: Any, compiled: _Compiled, args: tuple[Any, ...]
    ) -> list[Any]:
        """Run ``compiled`` with ``args`` in place of the markers."""
        adapt = connection.ops.adapt_datetimefield_value
        params = list(compiled.params)
        for position, arg in compiled.slots:
            value = args[arg]
            params[position] = adapt(value) if isinstance(value, datetime) else value
        shared = _shared.cursors.get(self._using)
        if shared is not None and shared.db is connection:
            shared.execute(compiled.sql, params)
            return list(shared.fetchall())
        with connection.cursor() as cursor:
            cursor.execute(compiled.sql, params)
            return list(cursor.fetchall())

    def rows(self, *args: Any) -> list[tuple[Any, ...]]:
        """Run the query with ``args``; the rows as the database returns them."""
        connection = connections[self._using]
        return self._run(connection, self._prepared(connection), args)

    def instances(self, *args: Any) -> list[Any]:
        """Run a query of model rows (with ``select_related`` models one
        level deep); model instances, every field converted as the ORM
        converts it."""
        connection = connections[self._using]
        compiled = self._prepared(connection)
        if not compiled.parts:
            raise TypeError("instances() needs a query of model rows")
        rows = self._run(connection, compiled, args)
        main, *related = compiled.parts
        found = []
        for row in rows:
            if compiled.converters:
                row = list(row)
                for i, funcs, expression in compiled.converters:
                    value = row[i]
                    for convert in funcs:
                        value = convert(value, expression, connection)
                    row[i] = value
            obj = main.model.from_db(
                self._using, main.attnames, row[main.start : main.end]
            )
            for part in related:
                values = row[part.start : part.end]
                # A nullable foreign key with no row: no object.
                other = (
                    None
                    if values[part.pk] is None
                    else part.model.from_db(self._using, part.attnames, values)
                )
                part.field.set_cached_value(obj, other)
                if other is not None and part.field.unique:  # one-to-one
                    part.field.remote_field.set_cached_value(other, obj)
            found.append(obj)
        return found

    def value(self, *args: Any, default: Any = None) -> Any:
        """The first column of the first row, or ``default``."""
        found = self.rows(*args)
        return found[0][0] if found else default


class PreparedIn:
    """A prepared query of many rows at once: ``build(values, *extra)`` gets a
    list of values for an ``__in`` lookup. It is compiled once per list size
    (``SIZES``; a shorter list is padded with its first value, which matches
    nothing more) and a longer one runs in chunks, so a batch of 40 openings
    costs one query where it cost 40."""

    SIZES = (1, 8, 64)

    def __init__(
        self,
        build: Callable[..., QuerySet[Any, Any]],
        kind: type,
        extra: Sequence[type] = (),
        using: str = DEFAULT_DB_ALIAS,
    ) -> None:
        self._by_size = {
            size: Prepared(
                lambda *args, size=size: build(list(args[:size]), *args[size:]),
                [kind] * size + list(extra),
                using,
            )
            for size in self.SIZES
        }

    def _one(self, values: Sequence[Any]) -> tuple[Prepared, list[Any]]:
        size = next(n for n in self.SIZES if n >= len(values))
        return self._by_size[size], [*values] + [values[0]] * (size - len(values))

    def instances(self, values: Sequence[Any], *extra: Any) -> list[Any]:
        """:meth:`Prepared.instances` for at most ``SIZES[-1]`` values, in one
        query (a query with a limit or an order cannot be run in chunks)."""
        if not 0 < len(values) <= self.SIZES[-1]:
            raise ValueError(f"{len(values)} values: 1 to {self.SIZES[-1]} fit")
        prepared, padded = self._one(values)
        return prepared.instances(*padded, *extra)

    def rows(self, values: Sequence[Any], *extra: Any) -> list[tuple[Any, ...]]:
        """The rows for ``values``: any number of distinct values, in any
        order (a value in two chunks would find its rows twice)."""
        found: list[tuple[Any, ...]] = []
        largest = self.SIZES[-1]
        for start in range(0, len(values), largest):
            prepared, chunk = self._one(values[start : start + largest])
            found += prepared.rows(*chunk, *extra)
        return found
