"""The path of one postback, top to bottom.

partner  the active partner at the endpoint path, or at one of its extra paths (cached; 404 when none)
parse    the request -> a Postback: parameters, body errors, client address (parse.py)
guard    limits, access, quota: a Refusal (400/403/413/429) stores nothing (guards.py)
map      the partner's parameters -> our fields, coerced (decide.partner_postback_map)
store    decided against the original and written in the partner's database, the
         decision announced at the hook point in the same transaction (store.py,
         decide.py, hooks.py); 503 when the database cannot be used, once more at the
         partner's new location when its old one refused the write as moved (partners/moves.py)
respond  the JSON answer (respond.py), named for logs and metrics
"""

import logging
import time

from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse

from conversions.ingest.decide import partner_postback_map
from conversions.ingest.guards import postback_guard
from conversions.ingest.limits import RAW_BODY_PARAMS
from conversions.ingest.parse import Postback, postback_parse, storable_json
from conversions.ingest.refusals import Refusal, Refused, refusal_record
from conversions.ingest.respond import (
    not_found_response,
    refusal_response,
    stored_response,
    unavailable_response,
)
from conversions.ingest.steps import StepLog
from conversions.ingest.store import Stored, postback_store
from conversions.outcomes import Outcome
from infra.databases import ConfigurationUnavailable, PartnerDatabaseUnavailable, partner_database
from infra.observability import postback_observe, postback_outcome_observe
from partners.models import Partner
from partners.moves import partner_reload_if_moved
from partners.selectors import partner_get_by_endpoint, partner_get_by_extra_path

logger = logging.getLogger("conversions.ingest")


def postback_ingest(request: HttpRequest, endpoint_path: str, *, extra_path: bool = False) -> HttpResponse:
    """Receive one postback at `endpoint_path` (/partner/<endpoint_path>; with `extra_path`,
    /<endpoint_path>, one of a partner's extra paths) and answer it (see the module doc)."""
    started = time.perf_counter()
    try:
        partner = (partner_get_by_extra_path if extra_path else partner_get_by_endpoint)(endpoint_path)
    except DatabaseError:
        logger.exception("configuration database unavailable")
        postback_outcome_observe(Outcome.UNAVAILABLE.label)
        return unavailable_response("The configuration database is unavailable; retry later")
    if partner is None:
        postback_outcome_observe(Outcome.NOT_FOUND.label)
        return not_found_response(endpoint_path)
    postback_observe(partner)
    steps = StepLog.start(partner, endpoint_path)
    postback = None
    try:
        postback = postback_parse(request)
        try:
            postback_guard(partner=partner, postback=postback)
            stored = postback_record(partner=partner, postback=postback, steps=steps)
        except PartnerDatabaseUnavailable as exc:
            # This process still had the partner's old storage, fenced by move_partner (the
            # quota's counter or the store hit it): stored once where the partner is now, the
            # guards not run again (the quota keeps a count it could not send); 503 until the switch.
            moved = partner_reload_if_moved(partner=partner, error=exc)
            if moved is None:
                raise
            stored = postback_record(partner=moved, postback=postback, steps=steps)
    except Refused as refused:
        if steps is not None:
            steps.refused(refused.refusal.reason)
        return _refused(partner, refused.refusal, postback)
    except ConfigurationUnavailable as exc:
        if steps is not None:
            steps.configuration_unavailable()
        logger.error("postback partner=%s outcome=unavailable configuration database: %s", partner.partner_code, exc)
        postback_outcome_observe(Outcome.UNAVAILABLE.label)
        return unavailable_response("The configuration database is unavailable; retry later")
    except PartnerDatabaseUnavailable as exc:
        if steps is not None:
            steps.database_unavailable()
        logger.error("postback partner=%s outcome=unavailable %s", partner.partner_code, exc)
        postback_outcome_observe(Outcome.UNAVAILABLE.label)
        return unavailable_response(f"The database of partner '{partner.partner_code}' is unavailable; retry later")
    if stored.outcome is Outcome.INVALID:
        refusal_record(partner=partner, reason="invalid_data")
    postback_outcome_observe(stored.outcome.label)
    elapsed_ms = round((time.perf_counter() - started) * 1000, 2)
    _log_stored(partner, stored, steps, elapsed_ms)
    return stored_response(partner=partner, stored=stored, elapsed_ms=elapsed_ms)


def postback_record(*, partner: Partner, postback: Postback, steps: StepLog | None = None) -> Stored:
    """Map a postback that passed the guards and store it in the partner's database.

    Raises PartnerDatabaseUnavailable when nothing could be stored, so the sender retries.
    """
    # Before anything is logged or stored: the partner's secret never leaves the request.
    params = postback.masked_params(secret=partner.postback_secret, token_param=partner.token_param)
    if steps is not None:
        steps.received(params)
    mapped = partner_postback_map(partner=partner, params=params)
    if postback.errors:
        mapped.errors = {**postback.errors, **mapped.errors}
    if not mapped.is_valid and postback.body and not RAW_BODY_PARAMS & params.keys():
        # A rejected postback keeps its body as received too, whatever was read of it.
        params = {**params, **postback.raw_body_params(secret=partner.postback_secret)}
    if steps is not None:
        steps.mapped(mapped.sources, params)
    row = {
        "partner_id": partner.pk,
        "raw_data": storable_json(params),
        "request_headers": postback.stored_headers(secret=partner.postback_secret),
        "request_ip": postback.client_ip,
    }
    with partner_database(partner) as alias:
        return postback_store(partner=partner, alias=alias, row=row, mapped=mapped, digest=postback.digest, steps=steps)


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


def _log_stored(partner: Partner, stored: Stored, steps: StepLog | None, elapsed_ms: float) -> None:
    conversion_id = stored.conversion.conversion_id
    if steps is not None:
        steps.stored(partner, stored, elapsed_ms)
    if stored.outcome is Outcome.INVALID:
        # As a refusal is (_refused): a WARNING naming the fields, whatever the step logs.
        logger.warning(
            "postback rejected partner=%s reason=invalid_data status=%s ip=%s conversion_id=%s fields=%s",
            partner.partner_code,
            stored.outcome.http_status,
            stored.conversion.request_ip,
            conversion_id or "-",
            ",".join(stored.errors),
        )
    elif steps is None:
        logger.info(
            "postback partner=%s outcome=%s conversion_id=%s time=%.2fms",
            partner.partner_code,
            stored.outcome.answer,
            conversion_id,
            elapsed_ms,
        )
