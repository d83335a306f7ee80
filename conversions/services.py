"""The ingest service: a postback's parameters become one stored conversion."""

import logging
import zoneinfo
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal

from django.db import DatabaseError, IntegrityError, transaction

from conversions.models import PartnerConversion
from partners.databases import PartnerDatabaseUnavailable, database_breaker
from partners.mapping import CANONICAL_FIELDS, MappedPostback, postback_map
from partners.models import Partner

logger = logging.getLogger("conversions.ingest")

Outcome = Literal["success", "duplicate", "error"]


@dataclass(frozen=True)
class PostbackResult:
    """What happened to one postback, and the row that records it."""

    outcome: Outcome
    conversion: PartnerConversion
    errors: dict[str, str] = field(default_factory=dict)


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
) -> PostbackResult:
    """Map, validate and store one postback in the partner's database.

    `errors` carries problems found before mapping (an unreadable body, say); the
    postback is then stored as rejected with them. Raises PartnerDatabaseUnavailable
    when nothing could be stored, so the sender retries.
    """
    steps = partner.enable_logging and logger.isEnabledFor(logging.INFO)
    if steps:
        logger.info("📊 步驟2: 收集原始數據")
        logger.info("📋 原始參數: %s", params)
        logger.info("🔄 步驟3: 參數映射處理")
    mapped = postback_map(mapping=partner.parameter_mapping, params=params, tz=partner_timezone(partner.timezone))
    if errors:
        mapped.errors = {**errors, **mapped.errors}
    if steps:
        for name, source in mapped.sources.items():
            logger.info("  映射: %s -> %s = %s", name, source, params[source])
    row = {
        "partner_id": partner.pk,
        "raw_data": storable_json(params),
        "request_headers": storable_json(headers),
        "request_ip": client_ip,
    }
    alias = partner.database_alias
    database_breaker.check(alias)
    try:
        if not mapped.is_valid:
            return _record_rejected(alias=alias, row=row, mapped=mapped, steps=steps)
        if steps:
            logger.info("🔍 步驟4: 檢查重複轉化 (由數據庫唯一約束保證)")
        return _record_valid(alias=alias, row={**row, **mapped.values}, steps=steps)
    except DatabaseError as exc:
        database_breaker.record(alias, exc)
        raise PartnerDatabaseUnavailable(alias, str(exc).strip() or exc.__class__.__name__) from exc


def _record_valid(*, alias: str, row: dict[str, Any], steps: bool) -> PostbackResult:
    # The common case is one INSERT in autocommit: the partial unique index decides,
    # atomically, whether this is the original. Losing the race raises IntegrityError.
    for _attempt in range(3):
        conversion = PartnerConversion(**row, is_processed=True)
        if steps:
            logger.info("💾 步驟5: 創建轉化記錄")
        try:
            conversion.save(using=alias, force_insert=True)
        except IntegrityError:
            pass
        else:
            if steps:
                logger.info("✅ 步驟6: 標記為已處理")
            return PostbackResult(outcome="success", conversion=conversion)
        with transaction.atomic(using=alias):
            original = (
                PartnerConversion.objects.using(alias)
                .filter(
                    partner_id=row["partner_id"],
                    conversion_id=row["conversion_id"],
                    is_duplicate=False,
                    processing_error__isnull=True,
                )
                .only("pk")
                .first()
            )
            if original is None:
                continue  # the original vanished (retention purge): try again as original
            duplicate = PartnerConversion(**row, is_duplicate=True, duplicate_of_id=original.pk)
            duplicate.save(using=alias, force_insert=True)
        if steps:
            logger.info("⚠️ 重複轉化: conversion_id=%s, original=%s", row["conversion_id"], original.pk)
        return PostbackResult(outcome="duplicate", conversion=duplicate)
    raise PartnerDatabaseUnavailable(alias, "could not settle the original row after 3 attempts")


def _record_rejected(*, alias: str, row: dict[str, Any], mapped: MappedPostback, steps: bool) -> PostbackResult:
    # Keep what validated, plus every raw parameter, so nothing is lost and the row
    # can be reprocessed once the mapping or the sender is fixed.
    values = dict(mapped.values)
    conversion_id = values.pop("conversion_id", "")
    conversion = PartnerConversion(
        **row,
        **values,
        conversion_id=conversion_id,
        processing_error="; ".join(f"{name}: {message}" for name, message in mapped.errors.items()),
    )
    conversion.save(using=alias, force_insert=True)
    if steps:
        logger.info("❌ 拒絕: %s", conversion.processing_error)
    return PostbackResult(outcome="error", conversion=conversion, errors=mapped.errors)


def storable_json(value: Any) -> Any:
    """`value` with text every database can store: NUL and lone surrogates become U+FFFD."""
    if isinstance(value, str):
        if "\x00" in value:
            value = value.replace("\x00", "\ufffd")
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
        is_processed=conversion.is_processed,
        is_duplicate=conversion.is_duplicate,
        duplicate_of=conversion.duplicate_of_id,
        processing_error=conversion.processing_error,
        received_at=conversion.received_at.isoformat(),
    )
    return data
