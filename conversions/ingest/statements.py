"""The postback path's writes and reads as SQL built once per database vendor.

Building an INSERT through the ORM on every postback costs more CPU than the database
spends running it. These statements are built once from the models' fields (so they
follow the schema), take values prepared exactly as the ORM prepares them, and give
back model instances. On PostgreSQL they run as server-side prepared statements:
parsed and planned once per connection, their values sent apart from the SQL. Every
other read and write goes through the ORM.
"""

import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from functools import lru_cache
from typing import Any

import psycopg
from django.db import connections, models, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.utils import timezone

from conversions.ingest.hooks import Companion
from conversions.models import ORIGINAL_SQL, ConversionChange, PartnerConversion
from infra.databases import binding_cursor

ORIGINAL_CONDITION = f"partner_id = %s AND conversion_id = %s AND {ORIGINAL_SQL}"
# What the repeat path reads of an original: what it compares and answers with; the
# JSON documents and bookkeeping timestamps stay deferred (they load on access).
ORIGINAL_READ_EXCLUDED = frozenset({"raw_data", "request_headers", "created_at", "updated_at"})
# Columns whose values the field prepares for the database, as the ORM does (on
# PostgreSQL only JSON needs it: psycopg takes a Decimal or an aware datetime as it is).
_PREPARED_FIELDS = (models.DateTimeField, models.DecimalField, models.JSONField)


class _Table:
    """One model's insert statement and value preparation on one database vendor."""

    def __init__(self, model: type[models.Model], connection: BaseDatabaseWrapper):
        meta = model._meta
        quote = connection.ops.quote_name
        if not meta.concrete_fields[0].primary_key:
            # Instances are built positionally from (id, *insert values).
            raise TypeError(f"{model.__name__}: the primary key must be the first column")
        self.fields = [field for field in meta.concrete_fields if not field.primary_key]
        self.attnames = [field.attname for field in self.fields]
        self.table = quote(meta.db_table)
        columns = ", ".join(quote(field.column) for field in self.fields)
        placeholders = ", ".join(["%s"] * len(self.fields))
        self.insert_sql = f"INSERT INTO {self.table} ({columns}) VALUES ({placeholders})"  # noqa: S608
        self.insert_returning_sql = f"{self.insert_sql} RETURNING id"
        # Nothing is written when the row would be a second original (any unique index).
        self.insert_original_sql = f"{self.insert_sql} ON CONFLICT DO NOTHING RETURNING id"
        self.columns = columns
        self.prepare: list[Callable[[Any], Any] | None] = [
            _preparer(field, connection) if isinstance(field, _PREPARED_FIELDS) else None for field in self.fields
        ]
        self.prepare_by_name = dict(zip(self.attnames, self.prepare, strict=True))
        self.defaults: dict[str, Callable[[], Any]] = {}
        for field in self.fields:
            if getattr(field, "auto_now", False) or getattr(field, "auto_now_add", False):
                self.defaults[field.attname] = timezone.now
            elif field.has_default():
                self.defaults[field.attname] = field.get_default
            else:
                self.defaults[field.attname] = _none

    def row_values(self, values: dict[str, Any]) -> list[Any]:
        """Every column's value in insert order, defaults filled in (auto_now included)."""
        return [values[name] if name in values else self.defaults[name]() for name in self.attnames]

    def db_values_of(self, values: dict[str, Any]) -> list[Any]:
        """Some columns' values (by attname), prepared."""
        prepare = self.prepare_by_name
        return [
            value if value is None or prepare[name] is None else prepare[name](value) for name, value in values.items()
        ]

    def db_values(self, row: Sequence[Any]) -> list[Any]:
        return [
            value if prepare is None or value is None else prepare(value)
            for prepare, value in zip(self.prepare, row, strict=True)
        ]


def _none() -> None:
    return None


def _preparer(field: models.Field, connection: BaseDatabaseWrapper) -> Callable[[Any], Any] | None:
    if connection.vendor == "postgresql":
        if isinstance(field, models.JSONField):
            encoder = field.encoder
            return lambda value: connection.ops.adapt_json_value(value, encoder)
        # What the ORM passes on for a Decimal or an aware datetime is the value itself.
        return None

    def prepare(value: Any) -> Any:
        return field.get_db_prep_save(value, connection)

    return prepare


def _execute(alias: str, sql: str, params: Sequence[Any], *, fetch: bool = True) -> tuple[Any, ...] | None:
    """Run one statement on `alias` and return its first row (`fetch`: it returns rows)."""
    connection = connections[alias]
    if connection.vendor != "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchone() if fetch else None
    # Django's cursor binds values into the SQL text on the client, so the server parses
    # and plans every statement anew; a prepared statement does that once per connection.
    # The connection is managed as Django's cursor() would: health check, errors, logging.
    connection.close_if_health_check_failed()
    connection.ensure_connection()
    connection.validate_no_broken_transaction()
    started = time.monotonic()
    with connection.wrap_database_errors:
        cursor = _prepared_cursor(connection)
        cursor.execute(sql, params, prepare=True)
        row = cursor.fetchone() if fetch else None
    if connection.queries_logged:
        connection.queries_log.append({"sql": sql, "time": f"{time.monotonic() - started:.3f}"})
    return row


# One server-side binding cursor per psycopg connection, kept as long as that connection:
# a connection is lent to one thread at a time, so its cursor is too.
_cursors: "weakref.WeakKeyDictionary[psycopg.Connection, psycopg.Cursor]" = weakref.WeakKeyDictionary()
_cursors_lock = threading.Lock()


def _prepared_cursor(connection: BaseDatabaseWrapper) -> psycopg.Cursor:
    """A server-side binding cursor on the Django connection's current psycopg connection."""
    raw = connection.connection
    cursor = _cursors.get(raw)
    if cursor is None or cursor.closed:
        cursor = binding_cursor(raw)
        with _cursors_lock:
            _cursors[raw] = cursor
    return cursor


@lru_cache(maxsize=4096)  # one entry per partner alias: a thousand partners must not evict each other
def _tables(alias: str, vendor: str) -> tuple[_Table, _Table, "_OriginalReader"]:
    # Keyed by alias and vendor: a partner's alias could be re-pointed at another vendor.
    connection = connections[alias]
    return (
        _Table(PartnerConversion, connection),
        _Table(ConversionChange, connection),
        _OriginalReader(connection),
    )


def _tables_for(alias: str) -> tuple[_Table, _Table, "_OriginalReader"]:
    return _tables(alias, connections[alias].vendor)


def conversion_insert(*, alias: str, values: dict[str, Any]) -> PartnerConversion:
    """Insert one conversion row (a duplicate or a rejected postback) and return it."""
    table = _tables_for(alias)[0]
    row = table.row_values(values)
    inserted = _execute(alias, table.insert_returning_sql, table.db_values(row))
    return PartnerConversion.from_db(alias, None, (inserted[0], *row))


def original_insert(*, alias: str, values: dict[str, Any]) -> tuple[PartnerConversion | None, PartnerConversion | None]:
    """Insert `values` as the original of its conversion_id unless one exists.

    The partial unique index decides atomically. Returns (the new row, None), or
    (None, the existing original) when another row is the original and nothing was
    written; (None, None) when that original is gone again (a retention purge).
    """
    # (One statement for both, a CTE with a UNION, costs PostgreSQL three times the
    # CPU of the INSERT alone on every new conversion: the read stays separate.)
    conversions, _changes, reader = _tables_for(alias)
    row = conversions.row_values(values)
    inserted = _execute(alias, conversions.insert_original_sql, conversions.db_values(row))
    if inserted is not None:
        return PartnerConversion.from_db(alias, None, (inserted[0], *row)), None
    return None, reader.read(alias, values["partner_id"], values["conversion_id"])


class _OriginalReader:
    """SELECT of an original by (partner_id, conversion_id), converted like the ORM does."""

    def __init__(self, connection: BaseDatabaseWrapper):
        quote = connection.ops.quote_name
        self.fields = [
            field for field in PartnerConversion._meta.concrete_fields if field.attname not in ORIGINAL_READ_EXCLUDED
        ]
        self.attnames = [field.attname for field in self.fields]
        columns = ", ".join(quote(field.column) for field in self.fields)
        table = quote(PartnerConversion._meta.db_table)
        self.sql = f"SELECT {columns} FROM {table} WHERE {ORIGINAL_CONDITION}"  # noqa: S608
        self.converters = []
        for index, field in enumerate(self.fields):
            expression = field.cached_col
            found = connection.ops.get_db_converters(expression) + field.get_db_converters(connection)
            if found:
                self.converters.append((index, expression, found))

    def read(self, alias: str, partner_id: int, conversion_id: str) -> PartnerConversion | None:
        found = _execute(alias, self.sql, [partner_id, conversion_id])
        return None if found is None else self.instance(alias, found)

    def instance(self, alias: str, found: Sequence[Any]) -> PartnerConversion:
        connection = connections[alias]
        values = list(found)
        for index, expression, converters in self.converters:
            for converter in converters:
                values[index] = converter(values[index], expression, connection)
        return PartnerConversion.from_db(alias, self.attnames, values)


def original_get(*, alias: str, partner_id: int, conversion_id: str) -> PartnerConversion | None:
    """The original of a conversion_id (read without a lock), or None."""
    return _tables_for(alias)[2].read(alias, partner_id, conversion_id)


def original_update(
    *, alias: str, original: PartnerConversion, values: dict[str, Any], guards: dict[str, Any], change: dict[str, Any]
) -> bool:
    """Set `values` on the original and record `change` in its history, atomically, if
    the original still has the `guards` values (a compare-and-set). False when it has
    changed since it was read; nothing is written then.

    On PostgreSQL this is one statement: the UPDATE's row lock serializes racing
    updates, and the history row is inserted only when the UPDATE matched. On SQLite
    it is an IMMEDIATE transaction of the two statements.
    """
    connection = connections[alias]
    conversions, changes, _reader = _tables_for(alias)
    update_params = [*conversions.db_values_of(values), original.pk, *conversions.db_values_of(guards)]
    history_params = changes.db_values(changes.row_values({**change, "conversion_id": original.pk}))
    sql = _update_sql(alias, connection.vendor, tuple(values), tuple(guards))
    if connection.vendor == "postgresql":
        history_params = [
            value for name, value in zip(changes.attnames, history_params, strict=True) if name != "conversion_id"
        ]
        return _execute(alias, sql, [*update_params, *history_params]) is not None
    with transaction.atomic(using=alias), connection.cursor() as cursor:
        cursor.execute(sql, update_params)
        if cursor.rowcount != 1:
            return False
        cursor.execute(changes.insert_sql, history_params)
    return True


@lru_cache(maxsize=256)
def _update_sql(alias: str, vendor: str, names: tuple[str, ...], guards: tuple[str, ...]) -> str:
    """The compare-and-set UPDATE of an original (on PostgreSQL, with its history INSERT)."""
    connection = connections[alias]
    conversions, changes, _reader = _tables_for(alias)
    quote = connection.ops.quote_name
    same = "IS NOT DISTINCT FROM" if vendor == "postgresql" else "IS"
    assignments = ", ".join(f"{quote(name)} = %s" for name in names)
    conditions = " AND ".join(f"{quote(name)} {same} %s" for name in guards)
    update_sql = f"UPDATE {conversions.table} SET {assignments} WHERE id = %s AND {conditions}"  # noqa: S608
    if vendor != "postgresql":
        return update_sql
    # The history row takes the updated row's id: inserted only when the UPDATE matched.
    # (Typed: a bare parameter in a SELECT list would be text, not the column's type.)
    selected = ", ".join(
        "id" if field.attname == "conversion_id" else f"CAST(%s AS {field.db_type(connection)})"
        for field in changes.fields
    )
    insert_history = f"INSERT INTO {changes.table} ({changes.columns}) SELECT {selected} FROM updated"  # noqa: S608
    return f"WITH updated AS ({update_sql} RETURNING id) {insert_history} RETURNING 1"


def duplicate_insert(
    *, alias: str, values: dict[str, Any], original_pk: int, guards: dict[str, Any]
) -> PartnerConversion | None:
    """Insert `values` as a duplicate of the original `original_pk`, in one statement, if
    that row is still the original of this conversion_id and has the `guards` values;
    None, with nothing written, when it has changed since they were seen or is gone."""
    connection = connections[alias]
    table = _tables_for(alias)[0]
    row = table.row_values({**values, "is_duplicate": True, "duplicate_of_id": original_pk})
    sql = _duplicate_sql(alias, connection.vendor, tuple(guards))
    where = [values["partner_id"], values["conversion_id"], *table.db_values_of(guards)]
    inserted = _execute(alias, sql, [original_pk, *table.db_values(row), *where])
    return None if inserted is None else PartnerConversion.from_db(alias, None, (inserted[0], *row))


@lru_cache(maxsize=64)
def _duplicate_sql(alias: str, vendor: str, guards: tuple[str, ...]) -> str:
    connection = connections[alias]
    conversions = _tables_for(alias)[0]
    quote = connection.ops.quote_name
    if vendor == "postgresql":
        # Typed (a bare parameter in a SELECT list would be text), without the length or
        # precision: an explicit cast to varchar(50) would cut a longer value silently.
        selected = ", ".join(
            f"CAST(%s AS {field.db_type(connection).partition('(')[0]})" for field in conversions.fields
        )
        same = "IS NOT DISTINCT FROM"
    else:
        selected, same = ", ".join(["%s"] * len(conversions.fields)), "IS"
    compared = ("partner_id", "conversion_id", "is_duplicate", "processing_error", *guards)
    read = ", ".join(quote(name) for name in compared)
    conditions = " AND ".join(f"{quote(name)} {same} %s" for name in guards)
    # The row is found by its id alone (MATERIALIZED): planned once for every id, a
    # lookup by (partner_id, conversion_id) would walk all of the conversion's duplicates.
    return (
        f"WITH original AS MATERIALIZED (SELECT {read} FROM {conversions.table} WHERE id = %s) "  # noqa: S608
        f"INSERT INTO {conversions.table} ({conversions.columns}) SELECT {selected} FROM original "
        f"WHERE {ORIGINAL_CONDITION} AND {conditions} RETURNING id"
    )


def change_insert(*, alias: str, conversion: PartnerConversion, change: dict[str, Any]) -> None:
    """Record a change in the conversion's history without applying it."""
    changes = _tables_for(alias)[1]
    row = changes.row_values({**change, "conversion_id": conversion.pk})
    _execute(alias, changes.insert_sql, changes.db_values(row), fetch=False)


@lru_cache(maxsize=64)
def _companion_table(alias: str, vendor: str, model: type[models.Model]) -> _Table:
    return _Table(model, connections[alias])


def original_insert_with_companions(
    *, alias: str, values: dict[str, Any], companions: Sequence[Companion]
) -> tuple[PartnerConversion | None, PartnerConversion | None]:
    """original_insert, and the rows announced with it (hooks.Companion) written with it
    atomically when it is inserted.

    On PostgreSQL one statement (the companions' INSERTs are CTEs that take the new
    row's id: a conversion that conflicts inserts none of them), so the transaction costs
    no BEGIN and COMMIT round trips; elsewhere a transaction of the statements.
    """
    connection = connections[alias]
    if connection.vendor != "postgresql":
        with transaction.atomic(using=alias):
            conversion, original = original_insert(alias=alias, values=values)
            if conversion is not None:
                companions_insert(alias=alias, conversion_id=conversion.pk, companions=companions)
        return conversion, original
    conversions, _changes, reader = _tables_for(alias)
    row = conversions.row_values(values)
    params = conversions.db_values(row)
    tables = []
    for companion in companions:
        table = _companion_table(alias, connection.vendor, companion.model)
        tables.append((table, companion.conversion_field))
        companion_row = table.row_values({**companion.values, companion.conversion_field: None})
        params += [
            value
            for name, value in zip(table.attnames, table.db_values(companion_row), strict=True)
            if name != companion.conversion_field
        ]
    inserted = _execute(alias, _insert_with_companions_sql(alias, connection.vendor, tuple(tables)), params)
    if inserted is not None:
        return PartnerConversion.from_db(alias, None, (inserted[0], *row)), None
    return None, reader.read(alias, values["partner_id"], values["conversion_id"])


@lru_cache(maxsize=64)
def _insert_with_companions_sql(alias: str, vendor: str, tables: tuple[tuple["_Table", str], ...]) -> str:
    connection = connections[alias]
    conversions = _tables_for(alias)[0]
    parts = [f"inserted AS ({conversions.insert_original_sql})"]
    for index, (table, conversion_field) in enumerate(tables):
        # Typed: a bare parameter in a SELECT list would be text, not the column's type.
        selected = ", ".join(
            "inserted.id" if field.attname == conversion_field else f"CAST(%s AS {field.db_type(connection)})"
            for field in table.fields
        )
        insert = f"INSERT INTO {table.table} ({table.columns}) SELECT {selected} FROM inserted"  # noqa: S608
        parts.append(f"companion_{index} AS ({insert})")
    return f"WITH {', '.join(parts)} SELECT id FROM inserted"  # noqa: S608


def companions_insert(*, alias: str, conversion_id: int, companions: Iterable[Companion]) -> None:
    """Write the rows announced with a conversion (hooks.Companion), linked to it by id.

    Called inside the conversion's transaction.
    """
    vendor = connections[alias].vendor
    for companion in companions:
        table = _companion_table(alias, vendor, companion.model)
        row = table.row_values({**companion.values, companion.conversion_field: conversion_id})
        _execute(alias, table.insert_sql, table.db_values(row), fetch=False)
