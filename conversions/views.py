"""HTTP endpoints for postbacks. Views parse the request, call a service, render JSON."""

import json
import logging
import time
from typing import Any
from urllib.parse import parse_qsl

from django.conf import settings
from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent
from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse, JsonResponse, QueryDict
from django.http.multipartparser import MultiPartParserError
from django.views import View
from rest_framework.views import APIView

from conversions.access import postback_access_check
from conversions.limits import body_too_large, params_limits_check, request_size_check, too_many_parameters
from conversions.openapi import postback_schema
from conversions.quota import partner_quota_consume
from conversions.rejections import PostbackRejection, rejection_record
from conversions.request_meta import client_ip, headers_for_storage
from conversions.services import RAW_BODY_PARAM, PostbackResult, conversion_as_dict, conversion_record
from partners.databases import PartnerDatabaseUnavailable
from partners.models import Partner
from partners.selectors import partner_get_by_endpoint
from postback_site.observability import postback_observe, postback_outcome_observe

logger = logging.getLogger("conversions.ingest")

FORM_CONTENT_TYPES = frozenset({"", "application/x-www-form-urlencoded", "multipart/form-data"})
RAW_BODY_KEEP = 65536
COMPACT_JSON = {"ensure_ascii": False, "separators": (",", ":")}

HTTP_STATUS = {"success": 200, "duplicate": 200, "updated": 200, "error": 400}
MESSAGES = {
    "success": "Conversion recorded",
    "updated": "Conversion updated",
    "duplicate": "Duplicate conversion: already recorded, not counted again",
    "error": "Invalid postback: stored as rejected, fix the fields in 'errors'",
}


@postback_schema
class PostbackView(APIView):
    """`GET|POST /partner/<endpoint_path>`: a partner reports one conversion.

    An APIView so that the OpenAPI schema describes it, dispatched the plain Django way:
    a postback needs none of DRF's request wrapping, authentication, negotiation or
    rendering (it is always JSON, and its access checks are the partner's own), and on
    the hot path they cost more than the rest of the view.
    """

    http_method_names = ["get", "post"]

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        return View.dispatch(self, request, *args, **kwargs)

    def http_method_not_allowed(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        return json_response(
            {"status": "error", "message": f"Method {request.method} is not allowed; send GET or POST"},
            status=405,
            headers={"Allow": "GET, POST"},
        )

    def get(self, request: HttpRequest, endpoint_path: str) -> HttpResponse:
        return self._postback(request, endpoint_path)

    def post(self, request: HttpRequest, endpoint_path: str) -> HttpResponse:
        return self._postback(request, endpoint_path)

    def _postback(self, request: HttpRequest, endpoint_path: str) -> HttpResponse:
        started = time.perf_counter()
        try:
            partner = partner_get_by_endpoint(endpoint_path)
        except DatabaseError:
            logger.exception("configuration database unavailable")
            return _unavailable("The configuration database is unavailable; retry later")
        if partner is None:
            return json_response(
                {"status": "error", "message": f"No active partner at endpoint '/{endpoint_path.strip('/')}'"},
                status=404,
            )
        postback_observe(partner)
        # The step logs of one postback are one log record (one line each step): cheap
        # on the hot path, and one entry per postback in structured logs.
        trace = [] if partner.enable_logging and logger.isEnabledFor(logging.INFO) else None
        if trace is not None:
            trace += (
                f"🚀 開始處理動態Partner Postback: endpoint_path={endpoint_path}",
                "🔍 步驟1: 查找Partner配置",
                f"✅ 找到Partner: {partner.partner_name} (code: {partner.partner_code})",
            )
        ip = client_ip(request.META, trusted_proxies=settings.TRUSTED_PROXY_COUNT)
        try:
            params, body_errors, rejection = _checked_params(request, partner, ip)
            if rejection is not None:
                _trace_log(trace, f"⛔ 拒絕: {rejection.reason}")
                return _rejected(partner, rejection, ip)
            result = conversion_record(
                partner=partner,
                params=params,
                headers=headers_for_storage(request.headers),
                client_ip=ip,
                errors=body_errors,
                trace=trace,
            )
        except PartnerDatabaseUnavailable as exc:
            _trace_log(trace, "⛔ 數據庫不可用")
            logger.error("postback partner=%s outcome=unavailable %s", partner.partner_code, exc)
            return _unavailable(f"The database of partner '{partner.partner_code}' is unavailable; retry later")
        if result.outcome == "error":
            rejection_record(partner=partner, reason="invalid_data")
        else:
            postback_outcome_observe(result.outcome)
        elapsed_ms = round((time.perf_counter() - started) * 1000, 2)
        conversion_id = result.conversion.conversion_id
        if trace is not None:
            _trace_log(
                trace,
                f"🎉 Partner Postback處理完成: partner={partner.partner_name}, conversion_id={conversion_id}, "
                f"outcome={result.outcome}, time={elapsed_ms:.2f}ms",
            )
        else:
            logger.info(
                "postback partner=%s outcome=%s conversion_id=%s time=%.2fms",
                partner.partner_code,
                result.outcome,
                conversion_id,
                elapsed_ms,
            )
        return json_response(_postback_body(partner, result, elapsed_ms), status=HTTP_STATUS[result.outcome])


def json_response(body: dict[str, Any], *, status: int, headers: dict[str, str] | None = None) -> JsonResponse:
    """`body` as compact UTF-8 JSON, as DRF's JSON renderer writes it."""
    return JsonResponse(body, status=status, headers=headers, json_dumps_params=COMPACT_JSON)


def _trace_log(trace: list[str] | None, last_line: str) -> None:
    if trace is not None:
        trace.append(last_line)
        logger.info("\n".join(trace))


def _checked_params(
    request: HttpRequest, partner: Partner, ip: str | None
) -> tuple[dict[str, Any], dict[str, str], PostbackRejection | None]:
    """The postback's parameters once limits, access and quota allow it (in that order:
    the cheap checks first, and a refused client never uses up the partner's quota)."""
    rejection = request_size_check(request)
    if rejection is not None:
        return {}, {}, rejection
    try:
        params, body_errors = postback_params(request)
    except TooManyFieldsSent:
        return {}, {}, too_many_parameters()
    except RequestDataTooBig:
        return {}, {}, body_too_large()
    rejection = (
        params_limits_check(params)
        or postback_access_check(
            partner=partner,
            client_ip=ip,
            params=params,
            headers=request.headers,
            query_string=request.META.get("QUERY_STRING", "").encode("iso-8859-1", "replace"),
            body=request.body if request.method == "POST" else b"",
        )
        or partner_quota_consume(partner=partner)
    )
    return params, body_errors, rejection


def _rejected(partner: Partner, rejection: PostbackRejection, ip: str | None) -> HttpResponse:
    rejection_record(partner=partner, reason=rejection.reason)
    if rejection.reason != "quota_exceeded":  # that one logs once a day, in partner_quota_consume
        logger.warning(
            "postback rejected partner=%s reason=%s status=%s ip=%s",
            partner.partner_code,
            rejection.reason,
            rejection.http_status,
            ip,
        )
    body: dict[str, Any] = {
        "status": "error",
        "reason": rejection.reason,
        "message": rejection.message,
        "partner": partner_summary(partner),
    }
    if rejection.errors:
        body["errors"] = rejection.errors
    headers = {"Retry-After": str(rejection.retry_after)} if rejection.retry_after else None
    return json_response(body, status=rejection.http_status, headers=headers)


def postback_params(request: HttpRequest) -> tuple[dict[str, Any], dict[str, str]]:
    """Every parameter received (query string, then the body), and body-level errors.

    A parameter received more than once keeps all its values as a list (the last
    one is used for mapping). An unreadable body is kept verbatim under `_raw_body`.
    """
    params = _query_params(request)
    if request.method != "POST":
        return params, {}
    body = request.body
    if not body:
        return params, {}
    content_type = (request.content_type or "").lower()
    if content_type == "application/json" or content_type.endswith("+json"):
        try:
            data = json.loads(body, parse_constant=_reject_json_constant)
        except (ValueError, RecursionError):
            return _with_raw_body(params, body), {"body": "is not valid JSON"}
        if not isinstance(data, dict):
            return _with_raw_body(params, body), {"body": "must be a JSON object of parameter -> value"}
        return _merge(params, data), {}
    if content_type in FORM_CONTENT_TYPES:
        try:
            form = request.POST
        except MultiPartParserError as exc:
            return _with_raw_body(params, body), {"body": f"is not a valid multipart form ({exc})"}
        return _merge(params, _querydict_params(form)), {}
    return _with_raw_body(params, body), {
        "body": f"has unsupported Content-Type '{content_type}'; "
        "send application/x-www-form-urlencoded or application/json"
    }


def _query_params(request: HttpRequest) -> dict[str, Any]:
    """The query string's parameters, decoded and limited exactly as `request.GET` is,
    without building the QueryDict (its bookkeeping costs more than the parsing)."""
    query_string = request.META.get("QUERY_STRING", "")
    if not query_string:
        return {}
    encoding = request.encoding or settings.DEFAULT_CHARSET
    raw = query_string.encode("iso-8859-1")  # PEP 3333: the bytes as received, one char each
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError:
        text = raw.decode("iso-8859-1")
    try:
        pairs = parse_qsl(
            text, keep_blank_values=True, encoding=encoding, max_num_fields=settings.DATA_UPLOAD_MAX_NUMBER_FIELDS
        )
    except ValueError as exc:
        raise TooManyFieldsSent(
            "The number of GET/POST parameters exceeded settings.DATA_UPLOAD_MAX_NUMBER_FIELDS."
        ) from exc
    params: dict[str, Any] = {}
    for key, value in pairs:
        if key in params:
            before = params[key]
            params[key] = [*before, value] if isinstance(before, list) else [before, value]
        else:
            params[key] = value
    return params


def _querydict_params(querydict: QueryDict) -> dict[str, Any]:
    return {key: values[0] if len(values) == 1 else values for key, values in querydict.lists()}


def _merge(params: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    for key, value in extra.items():
        if key in params:
            before = params[key] if isinstance(params[key], list) else [params[key]]
            params[key] = before + (value if isinstance(value, list) else [value])
        else:
            params[key] = value
    return params


def _with_raw_body(params: dict[str, Any], body: bytes) -> dict[str, Any]:
    params[RAW_BODY_PARAM] = body[:RAW_BODY_KEEP].decode("utf-8", "replace")
    return params


def _reject_json_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def _unavailable(message: str) -> HttpResponse:
    return json_response(
        {"status": "error", "message": message},
        status=503,
        headers={"Retry-After": str(settings.POSTBACK_RETRY_AFTER)},
    )


def partner_summary(partner: Partner) -> dict[str, str]:
    return {"code": partner.partner_code, "name": partner.partner_name, "endpoint": partner.endpoint_path}


def _postback_body(partner: Partner, result: PostbackResult, elapsed_ms: float) -> dict[str, Any]:
    body: dict[str, Any] = {
        "status": result.outcome,
        "message": MESSAGES[result.outcome],
        "partner": partner_summary(partner),
        "conversion": conversion_as_dict(result.conversion),
        "processing_time_ms": elapsed_ms,
    }
    if result.errors:
        body["errors"] = result.errors
    if result.changes:
        body["changes"] = {name: [_json_value(v) for v in pair] for name, pair in result.changes.items()}
    if result.note:
        body["note"] = result.note
    return body


def _json_value(value: Any) -> Any:
    return value if value is None or isinstance(value, str) else str(value)
