"""The path of one postback, top to bottom.

partner  the active partner at the endpoint path (cached; 404 when none)
parse    the request -> a Postback: parameters, body errors, client address (parse.py)
guard    limits, access, quota: a Refusal (400/403/413/429) stores nothing (guards.py)
map      the partner's parameters -> our fields, coerced (decide.partner_postback_map)
store    decided against the original and written in the partner's database, the
         decision announced at the hook point in the same transaction (store.py,
         decide.py, hooks.py); 503 when the database cannot be used
respond  the JSON answer (respond.py), named for logs and metrics
"""

import logging
import time

from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse

from conversions.ingest.decide import partner_postback_map
from conversions.ingest.guards import postback_guard
from conversions.ingest.parse import RAW_BODY_PARAMS, Postback, postback_parse, storable_json
from conversions.ingest.refusals import Refusal, Refused, refusal_record
from conversions.ingest.respond import (
    not_found_response,
    refusal_response,
    stored_response,
    unavailable_response,
)
from conversions.ingest.store import Stored, postback_store
from conversions.outcomes import Outcome
from partners.databases import ConfigurationUnavailable, PartnerDatabaseUnavailable, partner_database
from partners.models import Partner
from partners.selectors import partner_get_by_endpoint
from postback_site.observability import postback_observe, postback_outcome_observe

logger = logging.getLogger("conversions.ingest")


def postback_ingest(request: HttpRequest, endpoint_path: str) -> HttpResponse:
    """Receive one postback at `endpoint_path` and answer it (see the module doc)."""
    started = time.perf_counter()
    try:
        partner = partner_get_by_endpoint(endpoint_path)
    except DatabaseError:
        logger.exception("configuration database unavailable")
        postback_outcome_observe(Outcome.UNAVAILABLE.label)
        return unavailable_response("The configuration database is unavailable; retry later")
    if partner is None:
        postback_outcome_observe(Outcome.NOT_FOUND.label)
        return not_found_response(endpoint_path)
    postback_observe(partner)
    # The step logs of one postback are one log record (one line each step): cheap on
    # the hot path, and one entry per postback in structured logs.
    trace = _trace_start(partner, endpoint_path)
    postback = None
    try:
        postback = postback_parse(request)
        postback_guard(partner=partner, postback=postback)
        stored = postback_record(partner=partner, postback=postback, trace=trace)
    except Refused as refused:
        _trace_end(trace, f"⛔ 拒絕: {refused.refusal.reason}")
        return _refused(partner, refused.refusal, postback)
    except ConfigurationUnavailable as exc:
        _trace_end(trace, "⛔ 配置數據庫不可用")
        logger.error("postback partner=%s outcome=unavailable configuration database: %s", partner.partner_code, exc)
        postback_outcome_observe(Outcome.UNAVAILABLE.label)
        return unavailable_response("The configuration database is unavailable; retry later")
    except PartnerDatabaseUnavailable as exc:
        _trace_end(trace, "⛔ 數據庫不可用")
        logger.error("postback partner=%s outcome=unavailable %s", partner.partner_code, exc)
        postback_outcome_observe(Outcome.UNAVAILABLE.label)
        return unavailable_response(f"The database of partner '{partner.partner_code}' is unavailable; retry later")
    if stored.outcome is Outcome.REJECTED:
        refusal_record(partner=partner, reason="invalid_data")
    postback_outcome_observe(stored.outcome.label)
    elapsed_ms = round((time.perf_counter() - started) * 1000, 2)
    _log_stored(partner, stored, trace, elapsed_ms)
    return stored_response(partner=partner, stored=stored, elapsed_ms=elapsed_ms)


def postback_record(*, partner: Partner, postback: Postback, trace: list[str] | None = None) -> Stored:
    """Map a postback that passed the guards and store it in the partner's database.

    Raises PartnerDatabaseUnavailable when nothing could be stored, so the sender retries.
    """
    # Before anything is logged or stored: the partner's secret never leaves the request.
    params = postback.masked_params(secret=partner.postback_secret)
    if trace is not None:
        trace += ("📊 步驟2: 收集原始數據", f"📋 原始參數: {params}", "🔄 步驟3: 參數映射處理")
    mapped = partner_postback_map(partner=partner, params=params)
    if postback.errors:
        mapped.errors = {**postback.errors, **mapped.errors}
    if not mapped.is_valid and postback.body and not RAW_BODY_PARAMS & params.keys():
        # A rejected postback keeps its body as received too, whatever was read of it.
        params = {**params, **postback.raw_body_params(secret=partner.postback_secret)}
    if trace is not None:
        trace += (f"  映射: {name} -> {source} = {params[source]}" for name, source in mapped.sources.items())
    row = {
        "partner_id": partner.pk,
        "raw_data": storable_json(params),
        "request_headers": postback.stored_headers(secret=partner.postback_secret),
        "request_ip": postback.client_ip,
    }
    with partner_database(partner) as alias:
        return postback_store(partner=partner, alias=alias, row=row, mapped=mapped, digest=postback.digest, trace=trace)


def _refused(partner: Partner, refusal: Refusal, postback: Postback | None) -> HttpResponse:
    refusal_record(partner=partner, reason=refusal.reason)
    if refusal.reason != "quota_exceeded":  # that one logs once a day, in partner_quota_consume
        logger.warning(
            "postback rejected partner=%s reason=%s status=%s ip=%s",
            partner.partner_code,
            refusal.reason,
            refusal.http_status,
            postback.client_ip if postback is not None else None,
        )
    postback_outcome_observe(refusal.outcome.label)
    return refusal_response(partner=partner, refusal=refusal)


def _trace_start(partner: Partner, endpoint_path: str) -> list[str] | None:
    if not (partner.enable_logging and logger.isEnabledFor(logging.INFO)):
        return None
    return [
        f"🚀 開始處理動態Partner Postback: endpoint_path={endpoint_path}",
        "🔍 步驟1: 查找Partner配置",
        f"✅ 找到Partner: {partner.partner_name} (code: {partner.partner_code})",
    ]


def _trace_end(trace: list[str] | None, last_line: str) -> None:
    if trace is not None:
        trace.append(last_line)
        logger.info("\n".join(trace))


def _log_stored(partner: Partner, stored: Stored, trace: list[str] | None, elapsed_ms: float) -> None:
    conversion_id = stored.conversion.conversion_id
    if trace is not None:
        if stored.outcome is Outcome.REJECTED:
            # Stored for the record, but refused: the step log must not end in a success line.
            last_line = (
                f"❌ Partner Postback已拒絕 (數據無效): partner={partner.partner_name}, "
                f"conversion_id={conversion_id or '-'}, outcome={stored.outcome.answer}, "
                f"time={elapsed_ms:.2f}ms"
            )
        else:
            last_line = (
                f"🎉 Partner Postback處理完成: partner={partner.partner_name}, conversion_id={conversion_id}, "
                f"outcome={stored.outcome.answer}, time={elapsed_ms:.2f}ms"
            )
        _trace_end(trace, last_line)
    if stored.outcome is Outcome.REJECTED:
        # As a refusal is (_refused): a WARNING naming the fields, whatever the step logs.
        logger.warning(
            "postback rejected partner=%s reason=invalid_data status=%s ip=%s conversion_id=%s fields=%s",
            partner.partner_code,
            stored.outcome.http_status,
            stored.conversion.request_ip,
            conversion_id or "-",
            ",".join(stored.errors),
        )
    elif trace is None:
        logger.info(
            "postback partner=%s outcome=%s conversion_id=%s time=%.2fms",
            partner.partner_code,
            stored.outcome.answer,
            conversion_id,
            elapsed_ms,
        )
