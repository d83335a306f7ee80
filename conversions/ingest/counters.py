"""Shared per-partner daily counters in the partner's database (one atomic upsert each)."""

import datetime

from django.db import connections

from conversions.models import DailyCounter

_TABLE = DailyCounter._meta.db_table

# One statement on PostgreSQL and SQLite (3.35+): the row lock taken by ON CONFLICT
# makes concurrent increments from any worker or instance serialise, never lose a count.
# The new count is never below `floor + by` (GREATEST on PostgreSQL, the two-argument
# MAX on SQLite): a counter taking over from another store starts where that one was.
# `last_at` never goes back either: batches from several processes land in any order.
_UPSERT = (
    f"INSERT INTO {_TABLE} (partner_id, day, name, count, last_at) VALUES (%s, %s, %s, %s, %s) "  # noqa: S608
    f"ON CONFLICT (partner_id, day, name) DO UPDATE SET count = {{greatest}}({_TABLE}.count + %s, excluded.count), "
    f"last_at = {{greatest}}({_TABLE}.last_at, excluded.last_at) "
    "RETURNING count"
)
_UPSERTS = {"postgresql": _UPSERT.format(greatest="GREATEST"), "sqlite": _UPSERT.format(greatest="MAX")}


def daily_counter_increment(
    *, alias: str, partner_id: int, day: datetime.date, name: str, now: datetime.datetime, by: int = 1, floor: int = 0
) -> int:
    """Add `by` to the partner's `name` counter for `day`, to at least `floor + by`;
    return the new count."""
    connection = connections[alias]
    ops = connection.ops
    with connection.cursor() as cursor:
        cursor.execute(
            _UPSERTS[connection.vendor],
            [
                partner_id,
                ops.adapt_datefield_value(day),
                name,
                floor + by,  # a new row starts at the floor
                ops.adapt_datetimefield_value(now),
                by,
            ],
        )
        return cursor.fetchone()[0]
