"""Reads across many partners at once: the partner list's counts, the all-partners overview,
and the search for a conversion in every partner.

Partners that are schemas of one shared PostgreSQL database are read together, in one
statement per database (per UNION_CHUNK of its partners):

    SELECT 17, count(*) FROM "acme_db"."partner_conversions" WHERE ...
    UNION ALL SELECT 18, count(*) FROM "rector_db"."partner_conversions" WHERE ...

each branch labelled with its partner's id, on a connection of that database as the login
role, which reads every partner's schema by its qualified name
(infra.databases.shared_database_cursor). The others (a database of their own, SQLite)
are read one by one with the per-partner selectors. Either way, a partner whose storage
cannot be read comes back with the reason instead of failing the others: a shared
database that does not answer marks each of its partners; a statement refused for one
schema (not provisioned, no privilege) runs again without it, which is then read alone
and says why. A statement that runs out of time (DB_STATEMENT_TIMEOUT_MS applies to the
whole UNION, or a lock held by a migration) says nothing of the database's health: it
does not open the database's breaker (which would refuse every partner's postbacks), and
its partners are read one by one, each in its own time, as before. Numbers are the
per-partner selectors' (conversion_count, conversion_stats), from the same rows.
"""

import string
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from django.core.exceptions import ImproperlyConfigured
from django.db import OperationalError, ProgrammingError, connections
from django.db.backends.utils import CursorWrapper
from django.db.models import Count, Max, Q
from django.db.models.functions import Trunc
from psycopg import errors, sql

from conversions.ingest.refusals import REJECTED_PREFIX
from conversions.models import DailyCounter, PartnerConversion, row_kind
from conversions.outcomes import RowKind
from conversions.selectors import (
    TIME_FIELDS,
    PartnerStats,
    TimeRange,
    conversion_count,
    conversion_stats,
    conversion_stats_from_groups,
)
from infra.databases import PartnerDatabaseUnavailable, partner_database, shared_database_cursor, shared_database_key
from partners.models import Partner

# Partners per statement. The planner opens each branch's table and its ~15 indexes and
# keeps them locked until the statement ends: 100 partners hold 1,602 of the server's
# lock slots (max_locks_per_transaction x max_connections: 6,400 by default), a few
# hundred would exhaust them ("out of shared memory"). Planning costs per partner
# (0.3-0.9 ms for the overview's two SELECTs), so the chunk size hardly changes a page's
# time (25 to 200 measured alike: bench/admin_scale_bench.py).
UNION_CHUNK = 100
# At most this many conversions a search lists (newest first).
SEARCH_LIMIT = 200

T = TypeVar("T")
HOUR = timedelta(hours=1)
TABLE = PartnerConversion._meta.db_table


class _OutOfTime(Exception):
    """A statement over a chunk was cancelled by a statement or lock timeout (not a database error)."""


@dataclass(frozen=True)
class Unreadable:
    """Why a partner's storage could not be read."""

    reason: str


# A chunk's partners (their pk) and their tables in its shared database.
Tables = dict[int, sql.Identifier]


def _partners_by_storage(partners: list[Partner]) -> tuple[list[list[Partner]], list[Partner], Tables]:
    """Chunks of at most UNION_CHUNK partners of one shared database, the partners read one
    by one, and the tables of the first."""
    shared: dict[str, list[Partner]] = {}
    alone: list[Partner] = []
    tables: Tables = {}
    for partner in partners:
        try:
            alias = partner.database_alias
            key = shared_database_key(alias)
        except ImproperlyConfigured:  # a URL this build cannot use: the per-partner path says so
            key = None
        if key is None:
            alone.append(partner)
        else:
            shared.setdefault(key, []).append(partner)
            tables[partner.pk] = sql.Identifier(connections.settings[alias]["SCHEMA"], TABLE)
    chunks = [
        members[start : start + UNION_CHUNK]
        for members in shared.values()
        for start in range(0, len(members), UNION_CHUNK)
    ]
    return chunks, alone, tables


def _each_partner(
    partners: list[Partner],
    *,
    together: Callable[[CursorWrapper, Tables], dict[int, T]] | None,
    alone: Callable[[Partner], T],
) -> dict[int, T | Unreadable]:
    """partner pk -> what `together` (one statement over the tables of a chunk of one shared
    database, answering for each of them) or `alone` (one partner, in its own storage)
    found, or Unreadable. Without `together`, every partner is read alone."""
    results: dict[int, T | Unreadable] = {}
    chunks, one_by_one, tables = _partners_by_storage(partners) if together else ([], list(partners), {})
    for chunk in chunks:
        try:
            found = _read_together(chunk[0], {partner.pk: tables[partner.pk] for partner in chunk}, together)
        except _OutOfTime:
            one_by_one.extend(chunk)
        except PartnerDatabaseUnavailable as exc:
            if isinstance(exc.__cause__, ProgrammingError):
                one_by_one.extend(chunk)  # refused even without the unreadable schemas: ask each
            else:
                results.update({partner.pk: Unreadable(exc.reason) for partner in chunk})
        else:
            results.update(found)
            one_by_one.extend(partner for partner in chunk if partner.pk not in found)
    for partner in one_by_one:
        try:
            with partner_database(partner):
                results[partner.pk] = alone(partner)
        except PartnerDatabaseUnavailable as exc:
            results[partner.pk] = Unreadable(exc.reason)
        except ImproperlyConfigured as exc:
            results[partner.pk] = Unreadable(str(exc))
    return results


def _read_together(
    first: Partner, tables: Tables, together: Callable[[CursorWrapper, Tables], dict[int, T]]
) -> dict[int, T]:
    """What `together` found for the tables, all but those it left out: one schema that
    cannot be read (not provisioned yet, no privilege) fails the whole statement, so it is
    run again without them (then read alone, they say why). `first` is one of the
    database's partners: its guard (the bulkhead and breaker) is the database's."""
    with partner_database(first) as alias, shared_database_cursor(alias) as cursor:
        try:
            try:
                return together(cursor, tables)
            except ProgrammingError:
                readable = _readable(cursor, tables)
                if len(readable) == len(tables):
                    raise
            return together(cursor, readable) if readable else {}
        except OperationalError as exc:
            # Not raised as a database error: partner_database would open the breaker.
            if isinstance(exc.__cause__, (errors.QueryCanceled, errors.LockNotAvailable)):
                raise _OutOfTime from exc
            raise


def _readable(cursor: CursorWrapper, tables: Tables) -> Tables:
    """The tables that exist and may be read by the login role."""
    names = {table.as_string(cursor.connection): pk for pk, table in tables.items()}
    cursor.execute(
        "SELECT name FROM unnest(%s::text[]) AS name "
        "WHERE has_table_privilege(to_regclass(name), 'SELECT')",  # NULL for a missing table
        [list(names)],
    )
    return {names[name]: tables[names[name]] for (name,) in cursor.fetchall()}


def _union(cursor: CursorWrapper, tables: Tables, branch: str, **shared: sql.Composable) -> list[tuple[Any, ...]]:
    """The rows of one statement: `branch` for each partner's table, joined by UNION ALL.

    In `branch` (sql.SQL text), {pk} is the partner's id, {table} its table, and every other
    field the `shared` SQL of that name. Everything is quoted by psycopg; the text is parsed
    once, not per partner (composing thousands of branches with sql.SQL.format took longer
    than planning them), and no value is parsed again after it is spliced in. Values are
    literals, with no parameters: a schema name may hold a `%`.
    """
    connection = cursor.connection
    values = {name: value.as_string(connection) for name, value in shared.items()}
    pieces = [(text, field) for text, field, _, _ in string.Formatter().parse(branch)]
    branches = []
    for pk, table in tables.items():
        values["pk"] = sql.Literal(pk).as_string(connection)
        values["table"] = table.as_string(connection)
        branches.append("".join(text + (values[field] if field is not None else "") for text, field in pieces))
    cursor.execute("\nUNION ALL\n".join(branches))
    return cursor.fetchall()


def _range_sql(time_range: TimeRange) -> sql.Composable:
    if time_range.time_field not in TIME_FIELDS:
        raise ValueError(f"not a time field: {time_range.time_field!r}")
    column = sql.Identifier(time_range.time_field)
    conditions = [sql.SQL("TRUE")]
    if time_range.start is not None:
        conditions.append(sql.SQL("{} >= {}").format(column, sql.Literal(time_range.start)))
    if time_range.end is not None:
        conditions.append(sql.SQL("{} < {}").format(column, sql.Literal(time_range.end)))
    return sql.SQL(" AND ").join(conditions)


# --- the partner list: rows received since a moment --------------------------------------


def partners_conversion_counts(*, partners: list[Partner], since: datetime | None = None) -> dict[int, int | None]:
    """partner pk -> how many rows its storage holds (received since `since`), as
    conversion_count; None for a partner whose storage cannot be read."""

    def together(cursor: CursorWrapper, tables: Tables) -> dict[int, int]:
        where = sql.SQL("received_at >= {}").format(sql.Literal(since)) if since else sql.SQL("TRUE")
        return dict(_union(cursor, tables, "SELECT {pk}, count(*) FROM {table} WHERE {where}", where=where))

    found = _each_partner(
        partners, together=together, alone=lambda partner: conversion_count(partner=partner, since=since)
    )
    return {pk: None if isinstance(count, Unreadable) else count for pk, count in found.items()}


# --- the all-partners overview -----------------------------------------------------------


def partners_stats(*, partners: list[Partner], time_range: TimeRange, top: int = 10) -> list[PartnerStats]:
    """conversion_stats of each partner without the split by status (the overview shows
    none), in the order given; a partner whose storage cannot be read is listed with the
    reason instead of failing the others. Without top offers (`top=0`, the overview's)
    partners of a shared database are read together."""

    def alone(partner: Partner) -> Any:
        return conversion_stats(partner=partner, time_range=time_range, top=top, statuses=False)

    def together(cursor: CursorWrapper, tables: Tables) -> dict[int, Any]:
        return _stats_together(cursor, tables, time_range)

    # Top offers take more queries per partner (their latest names): those are read alone.
    found = _each_partner(partners, together=None if top else together, alone=alone)
    results = []
    for partner in partners:
        stats = found[partner.pk]
        if isinstance(stats, Unreadable):
            results.append(PartnerStats(partner=partner, stats=None, unavailable=stats.reason))
        else:
            results.append(PartnerStats(partner=partner, stats=stats))
    return results


def _day_sql(time_range: TimeRange) -> sql.Composable:
    # The expression of TruncDate(..., tzinfo=UTC), which migration 0008's statistics are on.
    return sql.SQL("(({} AT TIME ZONE 'UTC'))::date").format(sql.Identifier(time_range.time_field))


def _stats_together(cursor: CursorWrapper, tables: Tables, time_range: TimeRange) -> dict[int, Any]:
    """conversion_stats(top=0) of each partner (its table): accepted rows grouped as
    conversion_day_groups (but the offer), rejected rows per day; two branches a partner,
    each read from its covering index as the per-partner queries are."""
    branch = (
        "SELECT {pk}, {day}, is_duplicate, status, count(*), sum(usd_sale_amount), sum(usd_earning), FALSE "
        "FROM {table} WHERE partner_id = {pk} AND {in_range} AND processing_error IS NULL "
        "GROUP BY 2, 3, 4 "
        "UNION ALL "
        "SELECT {pk}, {day}, NULL, NULL, count(*), NULL, NULL, TRUE "
        "FROM {table} WHERE partner_id = {pk} AND {in_range} AND processing_error IS NOT NULL "
        "GROUP BY 2"
    )
    rows = _union(cursor, tables, branch, day=_day_sql(time_range), in_range=_range_sql(time_range))
    accepted: dict[int, list[dict[str, Any]]] = {pk: [] for pk in tables}
    rejected: dict[int, list[dict[str, Any]]] = {pk: [] for pk in tables}
    for pk, group_day, is_duplicate, status, count, sale, earning, is_rejected in rows:
        if is_rejected:
            rejected[pk].append({"_day": group_day, "count": count})
        else:
            accepted[pk].append(
                {
                    "_day": group_day,
                    "is_duplicate": is_duplicate,
                    "status": status,
                    "count": count,
                    "sale": sale,
                    "earning": earning,
                }
            )
    return {
        pk: conversion_stats_from_groups(
            time_range=time_range, accepted=accepted[pk], rejected=rejected[pk], statuses=False
        )
        for pk in tables
    }


# --- the search for one conversion in every partner --------------------------------------


@dataclass(frozen=True)
class ConversionFound:
    """A row of one partner whose conversion_id or click_id is the term searched for."""

    partner: Partner
    id: int
    conversion_id: str
    click_id: str | None
    status: str | None
    received_at: datetime
    outcome: RowKind


@dataclass(frozen=True)
class ConversionSearch:
    term: str
    found: list[ConversionFound]  # newest first, at most `limit`
    more: bool  # more rows matched than are listed
    searched: int  # partners whose storage answered
    unavailable: list[tuple[Partner, str]]  # partners not searched, and why


FOUND_COLUMNS = ("id", "conversion_id", "click_id", "status", "received_at", "is_duplicate", "processing_error")


def partners_conversions_find(*, partners: list[Partner], term: str, limit: int = SEARCH_LIMIT) -> ConversionSearch:
    """The rows of `partners` whose conversion_id or click_id is exactly `term` (originals,
    duplicates and invalid postbacks alike), newest first (then by partner code), at most
    `limit` of them."""

    def together(cursor: CursorWrapper, tables: Tables) -> dict[int, list[tuple[Any, ...]]]:
        # Parenthesised: each branch keeps its own ORDER BY and LIMIT. conversion_id is found
        # through (partner_id, conversion_id), click_id through click_newest.
        branch = (
            "(SELECT {pk}, id, conversion_id, click_id, status, received_at, is_duplicate, processing_error "
            "FROM {table} WHERE partner_id = {pk} AND (conversion_id = {term} OR click_id = {term}) "
            "ORDER BY received_at DESC, id DESC LIMIT {limit})"
        )
        found = _union(cursor, tables, branch, term=sql.Literal(term), limit=sql.Literal(limit + 1))
        rows: dict[int, list[tuple[Any, ...]]] = {pk: [] for pk in tables}
        for pk, *row in found:
            rows[pk].append(tuple(row))
        return rows

    def alone(partner: Partner) -> list[tuple[Any, ...]]:
        queryset = (
            PartnerConversion.objects.using(partner.database_alias)
            .filter(Q(conversion_id=term) | Q(click_id=term), partner_id=partner.pk)
            .order_by("-received_at", "-id")
        )
        return list(queryset.values_list(*FOUND_COLUMNS)[: limit + 1])

    found = _each_partner(partners, together=together, alone=alone)
    by_pk = {partner.pk: partner for partner in partners}
    hits: list[ConversionFound] = []
    unavailable: list[tuple[Partner, str]] = []
    for pk, rows in found.items():
        if isinstance(rows, Unreadable):
            unavailable.append((by_pk[pk], rows.reason))
            continue
        for row_id, conversion_id, click_id, status, received_at, is_duplicate, processing_error in rows:
            hits.append(
                ConversionFound(
                    partner=by_pk[pk],
                    id=row_id,
                    conversion_id=conversion_id,
                    click_id=click_id,
                    status=status,
                    received_at=received_at,
                    outcome=row_kind(is_duplicate=is_duplicate, processing_error=processing_error),
                )
            )
    # Newest first; ties by partner, then newest row (ids are each partner's own): stable sorts.
    hits.sort(key=lambda hit: hit.id, reverse=True)
    hits.sort(key=lambda hit: hit.partner.partner_code)
    hits.sort(key=lambda hit: hit.received_at, reverse=True)
    unavailable.sort(key=lambda item: item[0].partner_code)
    return ConversionSearch(
        term=term,
        found=hits[:limit],
        more=len(hits) > limit,
        searched=len(partners) - len(unavailable),
        unavailable=unavailable,
    )


# --- channel health: what each partner received lately ------------------------------------


@dataclass(frozen=True)
class PartnerActivity:
    """What a partner's storage says of its traffic (health/signals.py reads it)."""

    buckets: dict[datetime, tuple[int, int]]  # hour (UTC) -> (rows received, of them invalid), since `since`
    last_hour: int  # rows received in the last hour
    invalid: int  # of them invalid
    since_check: int  # rows received since `since_check`
    newest: datetime | None  # the newest row's received_at
    counters: dict[str, dict[str, int]]  # ISO day -> counter name -> count (refusals: rejected:<reason>)


COUNTERS_TABLE = DailyCounter._meta.db_table
REFUSAL_COUNTERS = f"{REJECTED_PREFIX}%"


def partners_activity(
    *,
    partners: list[Partner],
    since: datetime,
    since_check: datetime,
    now: datetime,
    days: list[str],
) -> dict[int, PartnerActivity | Unreadable]:
    """partner pk -> its rows by hour since `since`, the last hour's, those since
    `since_check`, its newest row, and its refusal counters of `days` (ISO dates); or why its
    storage cannot be read. Partners of one shared database are read in three statements per
    UNION_CHUNK of them, the others one by one (the same numbers from the same rows)."""
    hour_ago = now - HOUR
    by_pk = {partner.pk: partner for partner in partners}

    def together(cursor: CursorWrapper, tables: Tables) -> dict[int, PartnerActivity]:
        values = {
            "since": sql.Literal(since),
            "now": sql.Literal(now),
            "hour_ago": sql.Literal(hour_ago),
            "since_check": sql.Literal(since_check),
        }
        buckets: dict[int, dict[datetime, tuple[int, int]]] = {pk: {} for pk in tables}
        hourly = (
            "SELECT {pk}, date_trunc('hour', received_at AT TIME ZONE 'UTC'), count(*), "
            "count(*) FILTER (WHERE processing_error IS NOT NULL) FROM {table} "
            "WHERE received_at >= {since} AND received_at < {now} GROUP BY 2"
        )
        for pk, hour, received, invalid in _union(cursor, tables, hourly, **values):
            buckets[pk][hour.replace(tzinfo=UTC)] = (received, invalid)
        lately = (
            "SELECT {pk}, count(*), count(*) FILTER (WHERE processing_error IS NOT NULL), "
            "count(*) FILTER (WHERE received_at >= {since_check}), "
            "(SELECT max(received_at) FROM {table} WHERE received_at < {now}) "
            "FROM {table} WHERE received_at >= {hour_ago} AND received_at < {now}"
        )
        found = {pk: row for pk, *row in _union(cursor, tables, lately, **values)}
        # The same schemas' counters (each a schema of this database: _partners_by_storage said so).
        counter_tables = {
            pk: sql.Identifier(connections.settings[by_pk[pk].database_alias]["SCHEMA"], COUNTERS_TABLE)
            for pk in tables
        }
        counted: dict[int, dict[str, dict[str, int]]] = {pk: {} for pk in tables}
        refusals = "SELECT {pk}, day, name, count FROM {table} WHERE day = ANY({days}::date[]) AND name LIKE {pattern}"
        rows = _union(
            cursor, counter_tables, refusals, days=sql.Literal(list(days)), pattern=sql.Literal(REFUSAL_COUNTERS)
        )
        for pk, day, name, count in rows:
            counted[pk].setdefault(day.isoformat(), {})[name] = count
        return {
            pk: PartnerActivity(
                buckets=buckets[pk],
                last_hour=found[pk][0],
                invalid=found[pk][1],
                since_check=found[pk][2],
                newest=found[pk][3],
                counters=counted[pk],
            )
            for pk in tables
        }

    def alone(partner: Partner) -> PartnerActivity:
        alias = partner.database_alias
        rows = PartnerConversion.objects.using(alias).filter(received_at__lt=now)
        buckets = {
            row["hour"].astimezone(UTC): (row["received"], row["invalid"])
            for row in rows.filter(received_at__gte=since)
            .annotate(hour=Trunc("received_at", "hour", tzinfo=UTC))
            .values("hour")
            .annotate(received=Count("id"), invalid=Count("id", filter=Q(processing_error__isnull=False)))
            .order_by()
        }
        # The newest of the table when the hour had none: the received_at index reads one entry.
        lately = rows.filter(received_at__gte=hour_ago).aggregate(
            received=Count("id"),
            invalid=Count("id", filter=Q(processing_error__isnull=False)),
            since_check=Count("id", filter=Q(received_at__gte=since_check)),
            newest=Max("received_at"),
        )
        newest = lately["newest"] or rows.order_by("-received_at").values_list("received_at", flat=True).first()
        counters: dict[str, dict[str, int]] = {}
        for day, name, count in (
            DailyCounter.objects.using(alias)
            .filter(partner_id=partner.pk, day__in=days, name__startswith=REJECTED_PREFIX)
            .values_list("day", "name", "count")
        ):
            counters.setdefault(day.isoformat(), {})[name] = count
        return PartnerActivity(
            buckets=buckets,
            last_hour=lately["received"],
            invalid=lately["invalid"],
            since_check=lately["since_check"],
            newest=newest,
            counters=counters,
        )

    return _each_partner(partners, together=together, alone=alone)
