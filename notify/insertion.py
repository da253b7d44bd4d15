"""A model's INSERT compiled once per process.

``Model.save()`` builds and compiles a new INSERT query for every row: for a
notification that is about three quarters of the CPU its insert costs, more
than the statement itself takes to run (docs/PERFORMANCE.md). Every publish
inserts one, so :class:`PreparedInsert` keeps the SQL that Django's compiler
generated for the first row and from then on only computes the parameters,
each field's value as ``save()`` prepares it (``pre_save``, then
``get_db_prep_save``). The first row's parameters are compared with the
compiler's own, so a difference fails loudly instead of storing something
else; ``tests/test_canary.py`` guards the Django code this mirrors.

A model with ``pre_save`` or ``post_save`` receivers is saved with ``save()``,
so that they run as ever.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db import connections
from django.db.models import AutoField, BigAutoField, Model
from django.db.models.signals import post_save, pre_save
from django.db.models.sql import InsertQuery


def _comparable(value: Any) -> Any:
    """A parameter as it compares: psycopg's JSON wrapper has no equality."""
    return (type(value), value.obj) if hasattr(value, "obj") else value


@dataclass(frozen=True, slots=True)
class _Compiled:
    sql: str
    returning: bool  # the statement returns the primary key (else: last id)


class PreparedInsert:
    def __init__(self, model: type[Model], using: str = "default") -> None:
        meta = model._meta
        if not isinstance(meta.pk, AutoField | BigAutoField):
            raise TypeError(f"{model.__name__} needs an automatic primary key")
        self._model = model
        self._using = using
        self._fields = [
            f
            for f in meta.local_concrete_fields
            if f is not meta.pk and not getattr(f, "generated", False)
        ]
        if any(
            getattr(f, "auto_now", False) or getattr(f, "auto_now_add", False)
            for f in self._fields
        ):
            # pre_save() gives a new time at each call: the first row's
            # parameters could not be checked against the compiler's.
            raise TypeError(f"{model.__name__} has auto_now fields: use save()")
        self._compiled: dict[str, _Compiled] = {}

    def insert(self, obj: Model) -> None:
        """Insert ``obj`` (in the caller's transaction, if any) and set its
        primary key, as ``obj.save(force_insert=True)`` would."""
        model = self._model
        if (
            obj.pk is not None  # the caller's own key: save() inserts it
            or pre_save.has_listeners(model)
            or post_save.has_listeners(model)
        ):
            obj.save(force_insert=True, using=self._using)
            return
        # As save() does: an unsaved related object is an error, not a NULL.
        obj._prepare_related_fields_for_save(operation_name="save")  # type: ignore[attr-defined]
        connection = connections[self._using]
        values = [field.pre_save(obj, True) for field in self._fields]
        if any(hasattr(value, "resolve_expression") for value in values):
            obj.save(force_insert=True, using=self._using)  # SQL, not a value
            return
        params = [
            field.get_db_prep_save(value, connection)
            for field, value in zip(self._fields, values, strict=True)
        ]
        compiled = self._compiled.get(connection.vendor)
        if compiled is None:
            compiled = self._compiled[connection.vendor] = self._compile(obj, params)
        pk = model._meta.pk
        assert pk.column is not None  # a concrete field
        with connection.cursor() as cursor:
            cursor.execute(compiled.sql, params)
            if compiled.returning:
                (value,) = cursor.fetchone()
            else:
                value = connection.ops.last_insert_id(
                    cursor, model._meta.db_table, pk.column
                )
        setattr(obj, pk.attname, int(value))
        obj._state.adding = False
        obj._state.db = self._using

    def _compile(self, obj: Model, params: list[Any]) -> _Compiled:
        connection = connections[self._using]
        returning = bool(connection.features.can_return_columns_from_insert)
        query = InsertQuery(self._model)
        query.insert_values(self._fields, [obj])
        compiler = query.get_compiler(using=self._using)
        compiler.returning_fields = [self._model._meta.pk] if returning else None
        statements = compiler.as_sql()
        if len(statements) != 1:
            raise ValueError(f"expected one INSERT statement, got {len(statements)}")
        sql, expected = statements[0]
        if [_comparable(v) for v in expected] != [_comparable(v) for v in params]:
            raise ValueError(
                f"{self._model.__name__}: prepared parameters {params!r} differ "
                f"from the compiler's {list(expected)!r}"
            )
        return _Compiled(sql, returning)
