"""The ingest service: a postback's parameters become one stored conversion."""

import logging
import zoneinfo
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal

from django.db import IntegrityError, transaction
from django.utils import timezone

from conversions.models import PartnerConversion
from conversions.request_meta import secret_masked
from conversions.statements import change_insert, conversion_insert, original_get, original_insert, original_update
from partners.databases import PartnerDatabaseUnavailable, partner_database
from partners.lifecycle import PENDING, transition_permitted
from partners.mapping import CANONICAL_FIELDS, MappedPostback, postback_map
from partners.models import Partner

logger = logging.getLogger("conversions.ingest")

Outcome = Literal["success", "duplicate", "updated", "error"]

# The columns a postback's parameters fill, and those that say how it was settled.
MAPPED_COLUMNS = (*CANONICAL_FIELDS, "status_raw")
SETTLED_COLUMNS = ("processing_error", "is_processed", "is_duplicate", "duplicate_of", "updated_at")
# What a later postback may change on the original: its state and its money.
LIFECYCLE_FIELDS = ("status", "usd_sale_amount", "usd_earning", "sale_amount_local", "payout_local", "currency")
# Where the postback view keeps a body it could not read.
RAW_BODY_PARAM = "_raw_body"


@dataclass(frozen=True)
class PostbackResult:
    """What happened to one postback, and the row that records it."""

    outcome: Outcome
    conversion: PartnerConversion
    errors: dict[str, str] = field(default_factory=dict)
    changes: dict[str, list[Any]] = field(default_factory=dict)
    note: str = ""


@lru_cache(maxsize=256)
def partner_timezone(name: str) -> zoneinfo.ZoneInfo:
    return zoneinfo.ZoneInfo(name)


def conversion_record(
    *,
    partner: Partner,
    params: dict[str, Any],
    headers: dict[str, str],
    client_ip: str | None,
    errors: dict[str, str] | None = None,
    trace: list[str] | None = None,
) -> PostbackResult:
    """Map, validate and store one postback in the partner's database.

    `errors` carries problems found before mapping (an unreadable body, say); the
    postback is then stored as rejected with them. `trace`, when given, collects the
    step log lines (the caller logs them as one record). Raises
    PartnerDatabaseUnavailable when nothing could be stored, so the sender retries.
    """
    # Before anything is logged or stored: the partner's secret never leaves the request.
    params = secret_masked(params, secret=partner.postback_secret)
    headers = secret_masked(headers, secret=partner.postback_secret)
    if trace is not None:
        trace += ("📊 步驟2: 收集原始數據", f"📋 原始參數: {params}", "🔄 步驟3: 參數映射處理")
    mapped = postback_map(
        mapping=partner.parameter_mapping,
        params=params,
        tz=partner_timezone(partner.timezone),
        status_mapping=partner.status_mapping,
    )
    if errors:
        mapped.errors = {**errors, **mapped.errors}
    if trace is not None:
        trace += (f"  映射: {name} -> {source} = {params[source]}" for name, source in mapped.sources.items())
    row = {
        "partner_id": partner.pk,
        "raw_data": storable_json(params),
        "request_headers": storable_json(headers),
        "request_ip": client_ip,
    }
    with partner_database(partner) as alias:
        if not mapped.is_valid:
            return _record_rejected(alias=alias, row=row, mapped=mapped, trace=trace)
        if trace is not None:
            trace.append("🔍 步驟4: 檢查重複轉化 (由數據庫唯一約束保證)")
        return _record_valid(partner=partner, row={**row, **mapped.values}, trace=trace)


def _record_valid(*, partner: Partner, row: dict[str, Any], trace: list[str] | None) -> PostbackResult:
    # The common case is one INSERT in autocommit: the partial unique index decides,
    # atomically, whether this is the original; when another row is, nothing is written.
    # A status past pending (approved, rejected, paid) usually reports a change to a
    # conversion already stored: its original is read first instead of trying an INSERT
    # that would find it. Either order leaves the decision to the index.
    alias = partner.database_alias
    read_first = row.get("status") not in (None, PENDING)
    for _attempt in range(3):
        original = None
        if not read_first:
            if trace is not None:
                trace.append("💾 步驟5: 創建轉化記錄")
            conversion, original = original_insert(alias=alias, values={**row, "is_processed": True})
            if conversion is not None:
                if trace is not None:
                    trace.append("✅ 步驟6: 標記為已處理")
                return PostbackResult(outcome="success", conversion=conversion)
        read_first = False
        result = _record_repeat(partner=partner, row=row, original=original)
        if result is not None:
            if trace is not None:
                trace.append(
                    f"🔁 已有轉化: conversion_id={row['conversion_id']}, outcome={result.outcome} "
                    f"{result.note or result.changes or ''}"
                )
            return result
        # No original (yet, or it vanished in a retention purge): insert it as the original.
    raise PartnerDatabaseUnavailable(alias, "could not settle the original row after 3 attempts")


def _record_repeat(
    *,
    partner: Partner,
    row: dict[str, Any],
    existing: PartnerConversion | None = None,
    original: PartnerConversion | None = None,
) -> PostbackResult | None:
    """A postback for a conversion_id that has an original: duplicate, update or stale.

    The original is read without a lock; an update is applied with a compare-and-set
    (the UPDATE matches only if the original still has the state that was read, and
    its row lock serializes racing updates), re-read and re-decided when it lost. A
    duplicate or a stale change needs no lock: the state only moves forward, so what
    was stale stays stale. `existing` is a stored rejected row being reprocessed: it
    becomes the duplicate instead of a new row; `original`, the original when it was
    just read. Returns None when there is no original.
    """
    alias = partner.database_alias
    for _attempt in range(5):
        if original is None:
            original = original_get(alias=alias, partner_id=row["partner_id"], conversion_id=row["conversion_id"])
        if original is None:
            return None
        changes = conversion_changes(original=original, incoming=row)
        if not changes:
            duplicate = _duplicate_store(alias=alias, row=row, original=original, existing=existing)
            return PostbackResult(outcome="duplicate", conversion=duplicate)
        before, after = original.status, row.get("status") or original.status
        applied = transition_permitted(before, after, partner.status_transitions)
        note = "" if applied else f"stale: status '{after}' after '{before}' is not applied"
        change = {
            "from_status": before,
            "to_status": after,
            "changes": _jsonable(changes),
            "applied": applied,
            "note": note,
            "raw_data": row["raw_data"],
            "request_ip": row["request_ip"],
        }
        values = {name: new for name, (_old, new) in changes.items()}
        if "status" in changes:
            values["status_raw"] = row.get("status_raw")
        values["updated_at"] = timezone.now()
        # A reprocessed row is accounted for by the history now: it stops being rejected
        # in the same transaction.
        with transaction.atomic(using=alias) if existing is not None else nullcontext():
            if not applied:
                change_insert(alias=alias, conversion=original, change=change)
            elif not original_update(
                alias=alias,
                original=original,
                values=values,
                guards={name: getattr(original, name) for name in LIFECYCLE_FIELDS},
                change=change,
            ):
                original = None
                continue  # changed since it was read: decide again on its new state
            if existing is not None:
                _duplicate_store(alias=alias, row=row, original=original, existing=existing)
        if not applied:
            return PostbackResult(outcome="duplicate", conversion=original, changes=changes, note=note)
        for name, value in values.items():
            setattr(original, name, value)
        return PostbackResult(outcome="updated", conversion=original, changes=changes)
    raise PartnerDatabaseUnavailable(alias, f"conversion {row['conversion_id']} kept changing; retry")


def _duplicate_store(
    *, alias: str, row: dict[str, Any], original: PartnerConversion, existing: PartnerConversion | None
) -> PartnerConversion:
    if existing is None:
        values = {**row, "is_duplicate": True, "duplicate_of_id": original.pk}
        return conversion_insert(alias=alias, values=values)
    existing.processing_error = None
    existing.is_processed = False
    existing.is_duplicate = True
    existing.duplicate_of_id = original.pk
    existing.save(using=alias, update_fields=[*MAPPED_COLUMNS, *SETTLED_COLUMNS])
    return existing


def conversion_changes(*, original: PartnerConversion, incoming: dict[str, Any]) -> dict[str, list[Any]]:
    """Lifecycle fields the incoming postback sends with a value different from the original's."""
    return {
        name: [getattr(original, name), incoming[name]]
        for name in LIFECYCLE_FIELDS
        if incoming.get(name) is not None and incoming[name] != getattr(original, name)
    }


def _jsonable(changes: dict[str, list[Any]]) -> dict[str, list[Any]]:
    return {name: [None if v is None else str(v) for v in pair] for name, pair in changes.items()}


def _record_rejected(
    *, alias: str, row: dict[str, Any], mapped: MappedPostback, trace: list[str] | None
) -> PostbackResult:
    # Keep what validated, plus every raw parameter, so nothing is lost and the row
    # can be reprocessed once the mapping or the sender is fixed.
    values = {
        **row,
        **mapped.values,
        "conversion_id": mapped.values.get("conversion_id", ""),
        "processing_error": "; ".join(f"{name}: {message}" for name, message in mapped.errors.items()),
    }
    conversion = conversion_insert(alias=alias, values=values)
    if trace is not None:
        trace.append(f"❌ 拒絕: {conversion.processing_error}")
    return PostbackResult(outcome="error", conversion=conversion, errors=mapped.errors)


def conversion_reprocess(*, partner: Partner, conversion: PartnerConversion) -> PostbackResult:
    """Re-run mapping and validation on a rejected row's raw data with the partner's current
    mapping; the row becomes the original, a duplicate or an update of the original exactly
    as a fresh postback would, or stays rejected with the new errors. Rows that are not
    rejected are left alone."""
    alias = partner.database_alias
    params = dict(conversion.raw_data or {})
    mapped = postback_map(
        mapping=partner.parameter_mapping,
        params=params,
        tz=partner_timezone(partner.timezone),
        status_mapping=partner.status_mapping,
    )
    if RAW_BODY_PARAM in params:
        # The body could not be read when it arrived; re-reading the same bytes cannot succeed.
        mapped.errors = {"body": "was unreadable when received", **mapped.errors}
    with transaction.atomic(using=alias):
        row = PartnerConversion.objects.using(alias).select_for_update().get(pk=conversion.pk)
        if row.processing_error is None:
            return PostbackResult(outcome="duplicate" if row.is_duplicate else "success", conversion=row)
        if not mapped.is_valid:
            row.processing_error = "; ".join(f"{name}: {message}" for name, message in mapped.errors.items())
            row.save(using=alias, update_fields=["processing_error", "updated_at"])
            return PostbackResult(outcome="error", conversion=row, errors=mapped.errors)
        for name in MAPPED_COLUMNS:
            setattr(row, name, mapped.values.get(name))
        row.processing_error = None
        row.is_processed = True
        row.is_duplicate = False
        row.duplicate_of_id = None
        try:
            # The partial unique index decides, as for a fresh postback, whether this is the original.
            with transaction.atomic(using=alias):
                row.save(using=alias, update_fields=[*MAPPED_COLUMNS, *SETTLED_COLUMNS])
            return PostbackResult(outcome="success", conversion=row)
        except IntegrityError:
            incoming = {
                **mapped.values,
                "partner_id": row.partner_id,
                "raw_data": row.raw_data,
                "request_ip": row.request_ip,
            }
            result = _record_repeat(partner=partner, row=incoming, existing=row)
            if result is None:  # the original vanished meanwhile: this row is the original now
                row.save(using=alias, update_fields=[*MAPPED_COLUMNS, *SETTLED_COLUMNS])
                return PostbackResult(outcome="success", conversion=row)
            return result


def storable_json(value: Any) -> Any:
    """`value` with text every database can store: NUL and lone surrogates become U+FFFD."""
    if isinstance(value, str):
        if "\x00" in value:
            value = value.replace("\x00", "\ufffd")
        if value.isascii():
            return value
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            value = value.encode("utf-8", "replace").decode("utf-8")
        return value
    if isinstance(value, dict):
        return {storable_json(key): storable_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [storable_json(item) for item in value]
    return value


def conversion_as_dict(conversion: PartnerConversion) -> dict[str, Any]:
    """The stored conversion as JSON-ready data (amounts as exact strings)."""
    data: dict[str, Any] = {"id": conversion.pk}
    for name in CANONICAL_FIELDS:
        value = getattr(conversion, name)
        if value is not None and not isinstance(value, str):
            value = value.isoformat() if hasattr(value, "isoformat") else str(value)
        data[name] = value
    data.update(
        status_raw=conversion.status_raw,
        is_processed=conversion.is_processed,
        is_duplicate=conversion.is_duplicate,
        duplicate_of=conversion.duplicate_of_id,
        processing_error=conversion.processing_error,
        received_at=conversion.received_at.isoformat(),
    )
    return data
