"""Moving a partner's data to another storage location while it keeps receiving postbacks.

`partner_move` is `python manage.py move_partner CODE --to-url URL`: which partner, where
to, the target provisioned, then infra.databases.moves copies the tables online and fences
the source, and the partner is switched (saved with its new location). Every instance
follows within PARTNER_CACHE_SECONDS; until then a write it sends to the old location is
refused by the fence, and `partner_reload_if_moved` (the postback's side) finds the
partner's new location so the postback is stored there.
"""

import datetime
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass

from django.conf import settings
from django.db import DatabaseError, connections
from django.utils import timezone

from infra.databases import (
    PartnerDatabaseUnavailable,
    migrations_pending,
    partner_database_provision,
    partner_database_unregister,
    partner_database_url,
)
from infra.databases.config import url_schema_split, url_with_schema
from infra.databases.moves import (
    STORAGE_MOVED_SQLSTATE,
    PartnerTable,
    StorageLocation,
    StorageMove,
    StorageMoveFailed,
    TableCount,
    partner_tables,
    storage_location,
    storage_moved,
    storage_tables_with_rows,
)
from infra.databases.registry import alias_ensure, shared_template_url, template_is_shared
from infra.errors import error_first_line
from partners.models import Partner
from partners.selectors import partner_directory


class PartnerMoveRefused(Exception):
    """The move did not start: nothing was copied or fenced (the message says why)."""


class PartnerMoveFailed(Exception):
    """The move failed before the switch and was undone: the partner stays where it was."""


@dataclass(frozen=True)
class PartnerMoveResult:
    partner: Partner
    source: StorageLocation
    target: StorageLocation
    counts: list[TableCount]
    seconds: float
    fenced_at: datetime.datetime

    @property
    def rows(self) -> int:
        return sum(count.target for count in self.counts)


def partner_move(
    *, partner_code: str, to_url: str, batch_size: int = 5000, say: Callable[[str], None] = print
) -> PartnerMoveResult:
    """Move the partner's data to `to_url` online and switch the partner to it.

    Raises PartnerMoveRefused when it cannot start (unknown partner, same location, a target
    that holds rows, SQLite, ...) and PartnerMoveFailed when it failed before the switch
    (undone: the source serves on, the target is emptied). The source is left in place,
    fenced: removing it is the operator's decision.
    """
    started = time.monotonic()
    partner = Partner.objects.filter(partner_code=partner_code).first()
    if partner is None:
        raise PartnerMoveRefused(f"no partner with code '{partner_code}'")
    source = storage_location(partner_database_url(partner))
    target = storage_location(partner_move_target_url(partner=partner, url=to_url))
    tables = partner_tables()
    with ExitStack() as stack:
        try:
            _refuse_unless_movable(partner=partner, source=source, target=target, tables=tables)
            database_shared = _database_shared(partner=partner, location=source)
            say(f"moving {partner.partner_code}: {source.describe()} -> {target.describe()}")
            _target_provision(partner=partner, target=target, say=say)
            move = stack.enter_context(
                StorageMove(source=source, target=target, tables=tables, batch_size=batch_size, say=say)
            )
        except StorageMoveFailed as exc:  # unreachable or unreadable: nothing changed yet
            raise PartnerMoveRefused(str(exc)) from exc
        refusal = move.refusal()
        if refusal:
            raise PartnerMoveRefused(refusal)
        try:
            counts = _copy_behind_fence(move, say=say)
            _switch(partner=partner, target=target)
            fenced_for = time.time() - move.fenced_at
        except BaseException as exc:
            left = move.abort()
            undone = "the partner stays where it was, the source unfenced and the target emptied"
            if left:
                undone = f"the partner stays where it was; NOT undone: {'; '.join(left)}"
            raise PartnerMoveFailed(f"move of {partner_code} failed ({error_first_line(exc)}); {undone}") from exc
        removal = move.source_removal(database_shared=database_shared)
    partner_directory.clear()
    alias_ensure(partner)  # this process stores at the new location from now on
    fenced_at = datetime.datetime.fromtimestamp(move.fenced_at, tz=datetime.UTC)
    where = "the PARTNER_DATABASE_URL template" if not partner.database_url else "database_url"
    say(
        f"switched {fenced_for:.2f} s after the fence: {partner.partner_code} is stored at {target.describe()} "
        f"({where}); other instances follow within PARTNER_CACHE_SECONDS ({settings.PARTNER_CACHE_SECONDS:g} s), "
        "and a postback one of them sends to the old location meanwhile is stored at the new one"
    )
    say("verified row counts (source fenced, target not yet served):")
    width = max(len(count.table) for count in counts)
    say(f"  {'table'.ljust(width)}  {'source':>12}  {'target':>12}")
    for count in counts:
        say(f"  {count.table.ljust(width)}  {count.source:>12,}  {count.target:>12,}")
    say("the source is intact, fenced and no longer served; remove it once you no longer need it:")
    for statement in removal:
        say(f"  {statement}")
    seconds = time.monotonic() - started
    result = PartnerMoveResult(
        partner=partner, source=source, target=target, counts=counts, seconds=seconds, fenced_at=fenced_at
    )
    say(f"moved {result.rows:,} rows in {seconds:.2f} s ({result.rows / seconds:,.0f} rows/s)")
    return result


def partner_move_target_url(*, partner: Partner, url: str) -> str:
    """`url`, or the partner's schema in it when it is the shared PARTNER_DATABASE_URL."""
    template = settings.PARTNER_DATABASE_URL
    shared = template_is_shared() and not url_schema_split(url)[1]
    if shared and storage_location(url).key == storage_location(template).key:
        return url_with_schema(url, partner.database_name)
    return url


def partner_reload_if_moved(*, partner: Partner, error: BaseException) -> Partner | None:
    """The partner as `default` has it now, when `error` is the fence of a storage it was
    moved away from and it is stored elsewhere now; else None (another error, `default`
    unreadable, or the move has not switched yet). This process's cached partners are
    dropped then, so the next postback finds the new location too."""
    if not storage_moved(error):
        return None
    try:
        current = Partner.objects.filter(pk=partner.pk).first()
    except DatabaseError:
        return None
    if current is None or partner_database_url(current) == partner_database_url(partner):
        return None
    partner_directory.clear()
    return current


def _refuse_unless_movable(
    *, partner: Partner, source: StorageLocation, target: StorageLocation, tables: list[PartnerTable]
) -> None:
    for side, location in (("source", source), ("target", target)):
        if not location.is_postgres:
            raise PartnerMoveRefused(f"move_partner moves PostgreSQL storage only; the {side} is {location.describe()}")
    if source.key == target.key:
        raise PartnerMoveRefused(f"{partner.partner_code} is already stored at {target.describe()}")
    for other in Partner.objects.exclude(pk=partner.pk):
        if storage_location(partner_database_url(other)).key == target.key:
            raise PartnerMoveRefused(f"{target.describe()} is where partner {other.partner_code} is stored")
    alias = alias_ensure(partner)
    try:
        pending = migrations_pending(alias)
    except DatabaseError as exc:
        raise PartnerMoveRefused(f"cannot read the source {source.describe()}: {exc}".strip()) from exc
    finally:
        connections[alias].close()
    if pending:
        raise PartnerMoveRefused(
            f"the source has {len(pending)} unapplied migration(s): run `python manage.py init_partners` first"
        )
    occupied = storage_tables_with_rows(target, tables)
    if occupied:
        raise PartnerMoveRefused(f"the target {target.describe()} is not empty: {', '.join(occupied)} hold rows")


def _database_shared(*, partner: Partner, location: StorageLocation) -> bool:
    """Whether another partner's storage is in the database of `location`."""
    database = location.key[:4]  # engine, host, port, database name
    return any(
        storage_location(partner_database_url(other)).key[:4] == database
        for other in Partner.objects.exclude(pk=partner.pk)
    )


def _target_provision(*, partner: Partner, target: StorageLocation, say: Callable[[str], None]) -> None:
    # An unsaved stand-in at the target, under an alias of its own: provisioning registers
    # the alias it is given, and the partner's alias must point at the source until the switch.
    stand_in = Partner(
        partner_code=partner.partner_code, database_name=f"{partner.database_name}__move", database_url=target.url
    )
    try:
        result = partner_database_provision(partner=stand_in)
    except PartnerDatabaseUnavailable as exc:
        raise PartnerMoveRefused(f"cannot provision the target {target.describe()}: {exc.reason}") from exc
    finally:
        partner_database_unregister(stand_in.database_name)
    made = "created" if result.created else "exists"
    migrated = f", {len(result.migrations_applied)} migration(s) applied" if result.migrations_applied else ""
    say(f"target {made}{migrated}")


def _copy_behind_fence(move: StorageMove, *, say: Callable[[str], None]) -> list[TableCount]:
    move.capture_start()
    say("capturing the source's changes while copying")
    move.bulk_copy()
    caught_up = move.catch_up()
    say(f"caught up {caught_up:,} rows changed during the copy")
    move.fence()
    fenced_at = datetime.datetime.fromtimestamp(move.fenced_at, tz=datetime.UTC)
    say(f"fence installed at {fenced_at.isoformat()}: the source refuses writes (SQLSTATE {STORAGE_MOVED_SQLSTATE})")
    delta = move.changes_copy()
    say(f"delta: {delta:,} rows changed before the fence")
    move.capture_remove()
    move.sequences_align()
    counts = move.counts()
    differing = [count for count in counts if not count.matches]
    if differing:
        raise StorageMoveFailed(
            "source and target differ after the copy: "
            + ", ".join(
                f"{c.table} rows {c.source}/{c.target}, last id {c.source_max_id}/{c.target_max_id}" for c in differing
            )
        )
    return counts


def _switch(*, partner: Partner, target: StorageLocation) -> None:
    """Save the partner at the target ("" when that is where the template puts it), unless
    its location was changed by someone else during the move."""
    templated = storage_location(shared_template_url(settings.PARTNER_DATABASE_URL, partner.database_name))
    same_as_template = (templated.key, templated.config["USER"]) == (target.key, target.config["USER"])
    database_url = "" if same_as_template else target.url
    now = timezone.now()
    switched = Partner.objects.filter(pk=partner.pk, database_url=partner.database_url).update(
        database_url=database_url, updated_at=now
    )
    if not switched:
        raise StorageMoveFailed(f"{partner.partner_code}'s storage was changed by someone else during the move")
    partner.database_url = database_url
    partner.updated_at = now
