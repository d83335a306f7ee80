"""Respond: the JSON answer of a postback, for every outcome (conversions/outcomes.py)."""

from typing import Any

from django.conf import settings
from django.http import JsonResponse

from conversions.ingest.refusals import Refusal
from conversions.ingest.store import Stored
from conversions.models import PartnerConversion
from conversions.outcomes import Outcome
from partners.models import Partner

COMPACT_JSON = {"ensure_ascii": False, "separators": (",", ":")}

MESSAGES = {
    Outcome.SUCCESS: "Conversion recorded",
    Outcome.UPDATED: "Conversion updated",
    Outcome.DUPLICATE: "Duplicate conversion: already recorded, not counted again",
    Outcome.STALE: "Duplicate conversion: already recorded, not counted again",
    Outcome.INVALID: "Invalid postback: stored as invalid, fix the fields in 'errors'",
}


def json_response(body: dict[str, Any], *, status: int, headers: dict[str, str] | None = None) -> JsonResponse:
    """`body` as compact UTF-8 JSON."""
    return JsonResponse(body, status=status, headers=headers, json_dumps_params=COMPACT_JSON)


def _logged(response: JsonResponse) -> JsonResponse:
    """A 4xx the pipeline has logged itself (one line per postback; a quota refusal once a
    day): Django's own `Bad Request: /path` WARNING would say it again, on every one."""
    response._has_been_logged = True
    return response


def stored_response(*, partner: Partner, stored: Stored, elapsed_ms: float) -> JsonResponse:
    """200 success / duplicate / updated, or 400 for a postback stored as rejected."""
    outcome = stored.outcome
    body: dict[str, Any] = {
        "status": outcome.answer,
        "message": MESSAGES[outcome],
        "partner": partner_summary(partner),
        "conversion": conversion_as_dict(stored.conversion),
        "processing_time_ms": elapsed_ms,
    }
    if stored.errors:
        body["errors"] = stored.errors
    if stored.changes:
        body["changes"] = {name: [_json_value(v) for v in pair] for name, pair in stored.changes.items()}
    if stored.note:
        body["note"] = stored.note
    return _logged(json_response(body, status=outcome.http_status))


def refusal_response(*, partner: Partner, refusal: Refusal) -> JsonResponse:
    """400 / 403 / 413 / 429 naming the reason; nothing was stored."""
    body: dict[str, Any] = {
        "status": "error",
        "reason": refusal.reason,
        "message": refusal.message,
        "partner": partner_summary(partner),
    }
    if refusal.errors:
        body["errors"] = refusal.errors
    headers = {"Retry-After": str(refusal.retry_after)} if refusal.retry_after else None
    return _logged(json_response(body, status=refusal.http_status, headers=headers))


def not_found_response(endpoint_path: str) -> JsonResponse:
    return json_response(
        {"status": "error", "message": f"No active partner at endpoint '/{endpoint_path.strip('/')}'"},
        status=Outcome.NOT_FOUND.http_status,
    )


def unavailable_response(message: str) -> JsonResponse:
    """503 with Retry-After: nothing was stored, the sender should retry."""
    return json_response(
        {"status": "error", "message": message},
        status=Outcome.UNAVAILABLE.http_status,
        headers={"Retry-After": str(settings.POSTBACK_RETRY_AFTER)},
    )


def method_not_allowed_response(method: str) -> JsonResponse:
    return json_response(
        {"status": "error", "message": f"Method {method} is not allowed; send GET or POST"},
        status=Outcome.METHOD_NOT_ALLOWED.http_status,
        headers={"Allow": "GET, POST"},
    )


def partner_summary(partner: Partner) -> dict[str, str]:
    return {"code": partner.partner_code, "name": partner.partner_name, "endpoint": partner.endpoint_path}


def conversion_as_dict(conversion: PartnerConversion) -> dict[str, Any]:
    """The stored conversion as JSON-ready data (amounts as exact strings)."""
    data: dict[str, Any] = {"id": conversion.pk}
    for name, value in conversion.canonical_values().items():
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


def _json_value(value: Any) -> Any:
    return value if value is None or isinstance(value, str) else str(value)
