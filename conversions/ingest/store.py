"""Store: a postback's decision applied to the partner's database.

The partial unique index decides which row is the original, never a check-then-insert:
a new conversion is one `INSERT ... ON CONFLICT DO NOTHING` in autocommit, and only when
an original is already there is it read and the postback decided against it
(decide.py). A change is a compare-and-set UPDATE with its history row; when it lost a
race the original is read and decided again. A conversion recorded or changed is
announced (hooks.py) and what the listeners return is written in the same transaction.
The statements are statements.py's, built once per database vendor.
"""

import logging
import threading
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

from django.db import DataError, transaction
from django.utils import timezone

from conversions.ingest.decide import LIFECYCLE_FIELDS, Decision, decide
from conversions.ingest.hooks import Announcement, Source, decision_companions
from conversions.ingest.statements import (
    change_insert,
    companions_insert,
    conversion_insert,
    duplicate_insert,
    original_get,
    original_insert,
    original_insert_with_companions,
    original_update,
)
from conversions.ingest.steps import StepLog
from conversions.models import REQUEST_DIGESTS_KEPT, PartnerConversion
from conversions.outcomes import Outcome
from infra.databases import PartnerDatabaseUnavailable
from infra.errors import error_first_line
from infra.state import process_state_register
from partners.lifecycle import PENDING
from partners.mapping import CANONICAL_FIELDS, MappedPostback
from partners.models import Partner

logger = logging.getLogger("conversions.ingest")

# The columns a postback's parameters fill, and those that say how it was settled.
MAPPED_COLUMNS = (*CANONICAL_FIELDS, "status_raw")
SETTLED_COLUMNS = ("processing_error", "is_processed", "is_duplicate", "duplicate_of", "updated_at")


@dataclass(frozen=True)
class Stored:
    """What became of one postback, and the row that records it."""

    outcome: Outcome
    conversion: PartnerConversion
    errors: dict[str, str] = field(default_factory=dict)
    changes: dict[str, list[Any]] = field(default_factory=dict)
    note: str = ""
    # The original it was decided against (for a duplicate, the row it repeats).
    original: PartnerConversion | None = None


def postback_store(
    *,
    partner: Partner,
    alias: str,
    row: dict[str, Any],
    mapped: MappedPostback,
    digest: str | None,
    source: Source = "postback",
    steps: StepLog | None = None,
) -> Stored:
    """Store one mapped postback: the original, a duplicate, an update or a stale change
    of its conversion, or a rejected row when `mapped` has errors. `row` holds what is
    kept of the request (partner_id, raw_data, request_headers, request_ip).

    Raises PartnerDatabaseUnavailable when nothing could be stored.
    """
    if not mapped.is_valid:
        return _store_rejected(alias=alias, row={**row, **mapped.values}, errors=mapped.errors, steps=steps)
    if steps is not None:
        steps.dedupe_check()
    incoming = {**row, **mapped.values}
    try:
        return _store_valid(partner=partner, alias=alias, incoming=incoming, digest=digest, source=source, steps=steps)
    except DataError as exc:
        # A value this database cannot hold (the checks before should have caught it):
        # a 400 the sender can fix, stored as rejected, never a 503 retried forever.
        reason = error_first_line(exc) if str(exc).strip() else "a value cannot be stored"
        logger.warning("postback partner=%s could not be stored: %s", partner.partner_code, reason)
        return _store_rejected(alias=alias, row=row, errors={"postback": f"cannot be stored: {reason}"}, steps=steps)


class _RecentOriginals:
    """The originals this process stored or read lately, as their id and lifecycle
    fields; the last `size` of them (oldest forgotten first), safe across threads.

    A hint of what the original was, never trusted alone: a repeat decided against it is
    written only if the original still has those values (statements.duplicate_insert).
    """

    def __init__(self, size: int):
        self.size = size
        self._originals: dict[tuple, tuple[Any, ...]] = {}
        self._lock = threading.Lock()

    def get(self, alias: str, key: tuple) -> PartnerConversion | None:
        """The original as last seen (only _SEEN_FIELDS loaded), or None."""
        seen = self._originals.get(key)
        return None if seen is None else PartnerConversion.from_db(alias, _SEEN_FIELDS, seen)

    def add(self, key: tuple, original: PartnerConversion) -> None:
        # Its request digests are not kept (up to 32 of them): decide() reads them only for
        # a change, and a change is never written from what was seen.
        seen = tuple(() if name == "request_digests" else getattr(original, name) for name in _SEEN_FIELDS)
        with self._lock:
            self._originals.pop(key, None)
            self._originals[key] = seen
            while len(self._originals) > self.size:
                del self._originals[next(iter(self._originals))]

    def forget(self, key: tuple) -> None:
        with self._lock:
            self._originals.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._originals.clear()


# What decide() reads of an original, in the model's column order (as from_db takes it).
_SEEN_FIELDS = [
    field.attname
    for field in PartnerConversion._meta.concrete_fields
    if field.attname in {"id", *LIFECYCLE_FIELDS, "request_digests"}
]
# (alias, partner_id, conversion_id) -> the original as this process last saw it.
_recently_stored = _RecentOriginals(20_000)
process_state_register("conversions.recently_stored", _recently_stored.clear)


def _store_valid(
    *, partner: Partner, alias: str, incoming: dict[str, Any], digest: str | None, source: Source, steps: StepLog | None
) -> Stored:
    # A conversion_id this process stored or read lately is usually a repeat: decided
    # against the original as last seen, a duplicate is one guarded INSERT (it is written
    # only if the original still has those values). A status past pending (approved,
    # rejected, paid) usually reports a change to a conversion already stored: its
    # original is read first instead of trying an INSERT that would find it. Either
    # order leaves the decision to decide() and the unique index.
    key = (alias, incoming["partner_id"], incoming["conversion_id"])
    seen = _recently_stored.get(alias, key)
    if seen is not None:
        decision = decide(incoming=incoming, original=seen, transitions=partner.status_transitions, digest=digest)
        if decision.outcome is Outcome.DUPLICATE and not decision.note:
            guards = {name: getattr(seen, name) for name in LIFECYCLE_FIELDS}
            duplicate = duplicate_insert(alias=alias, values=incoming, original_pk=seen.pk, guards=guards)
            if duplicate is not None:
                stored = Stored(outcome=Outcome.DUPLICATE, conversion=duplicate, original=seen)
                if steps is not None:
                    steps.repeat(incoming["conversion_id"], stored)
                return stored
            _recently_stored.forget(key)  # it changed, or is gone: read it
    read_first = seen is not None or incoming.get("status") not in (None, PENDING)
    for _attempt in range(3):
        original = None
        if not read_first:
            if steps is not None:
                steps.creating()
            conversion, original = _insert_original(
                partner=partner, alias=alias, incoming=incoming, digest=digest, source=source
            )
            if conversion is not None:
                if steps is not None:
                    steps.processed()
                _recently_stored.add(key, conversion)
                return Stored(outcome=Outcome.SUCCESS, conversion=conversion)
        read_first = False
        stored = conversion_settle(
            partner=partner, alias=alias, incoming=incoming, digest=digest, source=source, original=original
        )
        if stored is not None:
            _recently_stored.add(key, stored.original)
            if steps is not None:
                steps.repeat(incoming["conversion_id"], stored)
            return stored
        # No original (yet, or it vanished in a retention purge): insert it as the original.
    raise PartnerDatabaseUnavailable(alias, "could not settle the original row after 3 attempts")


def _insert_original(
    *, partner: Partner, alias: str, incoming: dict[str, Any], digest: str | None, source: Source
) -> tuple[PartnerConversion | None, PartnerConversion | None]:
    values = {**incoming, "is_processed": True, "request_digests": [digest] if digest else []}
    companions = decision_companions(
        Announcement(event="recorded", source=source, partner=partner, conversion=_conversion_values(incoming))
    )
    if not companions:
        return original_insert(alias=alias, values=values)
    return original_insert_with_companions(alias=alias, values=values, companions=companions)


def conversion_settle(
    *,
    partner: Partner,
    alias: str,
    incoming: dict[str, Any],
    digest: str | None,
    source: Source,
    original: PartnerConversion | None = None,
    existing: PartnerConversion | None = None,
) -> Stored | None:
    """A valid postback for a conversion_id that has an original: duplicate, update or stale.

    The original is read without a lock (or given, when just read); an update is
    applied with a compare-and-set (the UPDATE matches only if the original still has
    the state that was read, and its row lock serializes racing updates), read and
    decided again when it lost. A duplicate or a stale change needs no lock: the state
    only moves forward, so what was stale stays stale. `existing` is a stored rejected
    row being reprocessed: it becomes the duplicate instead of a new row. Returns None
    when there is no original.
    """
    for _attempt in range(5):
        if original is None:
            original = original_get(
                alias=alias, partner_id=incoming["partner_id"], conversion_id=incoming["conversion_id"]
            )
        if original is None:
            return None
        decision = decide(incoming=incoming, original=original, transitions=partner.status_transitions, digest=digest)
        if decision.outcome is Outcome.DUPLICATE:
            duplicate = _store_duplicate(alias=alias, incoming=incoming, original=original, existing=existing)
            return Stored(outcome=Outcome.DUPLICATE, conversion=duplicate, note=decision.note, original=original)
        if not _store_change(
            partner=partner,
            alias=alias,
            incoming=incoming,
            digest=digest,
            source=source,
            original=original,
            decision=decision,
            existing=existing,
        ):
            original = None
            continue  # changed since it was read: decide again on its new state
        return Stored(
            outcome=decision.outcome,
            conversion=original,
            changes=decision.changes,
            note=decision.note,
            original=original,
        )
    raise PartnerDatabaseUnavailable(alias, f"conversion {incoming['conversion_id']} kept changing; retry")


def _store_change(
    *,
    partner: Partner,
    alias: str,
    incoming: dict[str, Any],
    digest: str | None,
    source: Source,
    original: PartnerConversion,
    decision: Decision,
    existing: PartnerConversion | None,
) -> bool:
    """Apply an UPDATED decision (or record a STALE one); False when the original changed
    meanwhile. On success `original` holds its new values."""
    applied = decision.outcome is Outcome.UPDATED
    change = {
        "from_status": original.status,
        "to_status": incoming.get("status") or original.status,
        "changes": {name: [None if v is None else str(v) for v in pair] for name, pair in decision.changes.items()},
        "applied": applied,
        "note": decision.note,
        "raw_data": incoming["raw_data"],
        "request_ip": incoming["request_ip"],
        "source": source,
    }
    companions = []
    values: dict[str, Any] = {}
    if applied:
        values = decision.updates(incoming)
        values["updated_at"] = timezone.now()
        if digest:
            values["request_digests"] = [*(original.request_digests or []), digest][-REQUEST_DIGESTS_KEPT:]
        companions = decision_companions(
            Announcement(
                event="changed",
                source=source,
                partner=partner,
                conversion=_conversion_values({**_conversion_values(original), **values}),
                changes=decision.changes,
            )
        )
    # A reprocessed row is accounted for by the history now: it stops being rejected in
    # the same transaction; rows announced with the change are written with it.
    atomic = existing is not None or bool(companions)
    with transaction.atomic(using=alias) if atomic else nullcontext():
        if not applied:
            change_insert(alias=alias, conversion=original, change=change)
        elif not original_update(
            alias=alias,
            original=original,
            values=values,
            guards={name: getattr(original, name) for name in LIFECYCLE_FIELDS},
            change=change,
        ):
            return False
        elif companions:
            companions_insert(alias=alias, conversion_id=original.pk, companions=companions)
        if existing is not None:
            _store_duplicate(alias=alias, incoming=incoming, original=original, existing=existing)
    for name, value in values.items():
        setattr(original, name, value)
    return True


def _store_duplicate(
    *, alias: str, incoming: dict[str, Any], original: PartnerConversion, existing: PartnerConversion | None
) -> PartnerConversion:
    if existing is None:
        values = {**incoming, "is_duplicate": True, "duplicate_of_id": original.pk}
        return conversion_insert(alias=alias, values=values)
    existing.processing_error = None
    existing.is_processed = False
    existing.is_duplicate = True
    existing.duplicate_of_id = original.pk
    existing.save(using=alias, update_fields=[*MAPPED_COLUMNS, *SETTLED_COLUMNS])
    return existing


def _store_rejected(*, alias: str, row: dict[str, Any], errors: dict[str, str], steps: StepLog | None) -> Stored:
    # Keep what validated, plus every raw parameter, so nothing is lost and the row can
    # be reprocessed once the mapping or the sender is fixed.
    values = {
        **row,
        "conversion_id": row.get("conversion_id") or "",
        "processing_error": rejected_error(errors),
    }
    conversion = conversion_insert(alias=alias, values=values)
    if steps is not None:
        steps.invalid(conversion.processing_error)
    return Stored(outcome=Outcome.INVALID, conversion=conversion, errors=errors)


def rejected_error(errors: dict[str, str]) -> str:
    """A rejected row's processing_error: every field's problem."""
    return "; ".join(f"{name}: {message}" for name, message in errors.items())


def _conversion_values(source: Any) -> dict[str, Any]:
    """A conversion's canonical fields, from mapped values (a dict) or a row."""
    if isinstance(source, dict):
        return {name: source.get(name) for name in CANONICAL_FIELDS}
    return source.canonical_values()
