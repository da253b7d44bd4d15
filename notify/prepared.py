"""ORM queries compiled once per process and run with fresh parameters.

Building a queryset and compiling it to SQL costs far more than running it:
the newest-visible-id query takes about 1.3 ms to compile and 25 µs to run on
SQLite (docs/PERFORMANCE.md). Opening a stream runs a handful of such queries
that differ only in their parameters, so :class:`Prepared` builds each one once
with marker values, keeps its SQL, and later swaps the markers for real values
in the parameter list. The query is still written with the ORM, for every
database backend, and the SQL is whatever Django generated for it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import connections
from django.db.models import QuerySet

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
        using: str = "default",
    ) -> None:
        self._build = build
        self._kinds = tuple(kinds)
        self._using = using
        self._compiled: dict[str, tuple[str, list[Any], list[tuple[int, int]]]] = {}
        self._model: Any = None

    def _compile(self) -> tuple[str, list[Any], list[tuple[int, int]]]:
        connection = connections[self._using]
        markers = [_marker(i, kind) for i, kind in enumerate(self._kinds)]
        queryset = self._build(*markers).using(self._using)
        self._model = queryset.model
        sql, params = queryset.query.get_compiler(using=self._using).as_sql()
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
        compiled = (sql, list(params), slots)
        self._compiled[connection.vendor] = compiled
        return compiled

    def _sql(self, args: tuple[Any, ...]) -> tuple[str, list[Any]]:
        connection = connections[self._using]
        compiled = self._compiled.get(connection.vendor) or self._compile()
        sql, template, slots = compiled
        adapt = connection.ops.adapt_datetimefield_value
        params = list(template)
        for position, arg in slots:
            value = args[arg]
            params[position] = adapt(value) if isinstance(value, datetime) else value
        return sql, params

    def rows(self, *args: Any) -> list[tuple[Any, ...]]:
        """Run the query with ``args``; the rows as the database returns them."""
        sql, params = self._sql(args)
        with connections[self._using].cursor() as cursor:
            cursor.execute(sql, params)
            return list(cursor.fetchall())

    def instances(self, *args: Any) -> list[Any]:
        """Run a query of whole model rows; model instances, with every
        field converted as the ORM converts it (``Manager.raw``)."""
        sql, params = self._sql(args)
        manager = self._model._default_manager.db_manager(self._using)
        return list(manager.raw(sql, params))

    def value(self, *args: Any, default: Any = None) -> Any:
        """The first column of the first row, or ``default``."""
        found = self.rows(*args)
        return found[0][0] if found else default
