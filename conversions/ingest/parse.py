"""Parse: an HTTP request (or a pasted postback) becomes a Postback.

Every parameter received is kept, in the order received: the query string, then the
body (a form, multipart or a JSON object). A parameter received more than once keeps
all its values as a list (the last one is what mapping uses). A body that cannot be
read is kept as it arrived (`_raw_body` when it is UTF-8 text, else `_raw_body_base64`)
with an error naming why, so the postback is stored as rejected and nothing is lost.
"""

import base64
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from django.conf import settings
from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent
from django.http import HttpRequest, QueryDict
from django.http.multipartparser import MultiPartParserError

from conversions.ingest.limits import (
    RAW_BODY_BASE64_PARAM,
    RAW_BODY_PARAM,
    body_too_large,
    request_size_check,
    too_many_parameters,
)
from conversions.ingest.refusals import Refused
from infra.masking import MASK, SECRET_PARAMS, headers_for_storage, secret_masked
from infra.request_meta import CHARSET_REFUSED, request_client_ip, text_encoding
from partners.mapping import TOKEN_PARAM

RAW_BODY_KEEP = 65536
FORM_CONTENT_TYPES = frozenset({"", "application/x-www-form-urlencoded"})


@dataclass(frozen=True)
class Postback:
    """One postback as received: everything the rest of the ingest needs of the request."""

    method: str
    query_string: bytes  # as received
    body: bytes
    params: dict[str, Any]
    errors: dict[str, str] = field(default_factory=dict)  # problems of the body itself
    client_ip: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        """What identifies the request byte for byte: a replay of it has the same digest."""
        message = b"\n".join((self.method.encode(), self.query_string, self.body))
        return hashlib.sha256(message).hexdigest()[:32]

    def masked_params(self, *, secret: str, token_param: str = TOKEN_PARAM) -> dict[str, Any]:
        """The parameters as mapped and logged: the `token` parameter (and the partner's own
        `token_param`) and the secret masked. (Stored as storable_json() of them.)"""
        names = SECRET_PARAMS if token_param == TOKEN_PARAM else SECRET_PARAMS | {token_param.lower()}
        params = secret_masked(self.params, secret=secret, names=names)
        if secret and RAW_BODY_BASE64_PARAM in params:
            params[RAW_BODY_BASE64_PARAM] = _base64_masked(params[RAW_BODY_BASE64_PARAM], secret)
        return params

    def raw_body_params(self, *, secret: str) -> dict[str, str]:
        """The body as received (see raw_body_params), with the secret masked."""
        return secret_masked(raw_body_params(self.body, secret=secret), secret=secret)

    def stored_headers(self, *, secret: str) -> dict[str, str]:
        """The headers as stored: credentials and the secret masked."""
        return storable_json(secret_masked(headers_for_storage(self.headers), secret=secret))


def postback_parse(request: HttpRequest) -> Postback:
    """The request's postback. Raises Refused when it is over a size or count limit."""
    refusal = request_size_check(request)
    if refusal is not None:
        raise Refused(refusal)
    query_string = request.META.get("QUERY_STRING", "").encode("iso-8859-1", "replace")  # PEP 3333: bytes as sent
    charset, charset_error = _charset(request)
    try:
        params = _query_params(query_string, charset)
        body = request.body if request.method == "POST" else b""
    except TooManyFieldsSent:
        raise Refused(too_many_parameters()) from None
    except RequestDataTooBig:
        raise Refused(body_too_large()) from None
    errors: dict[str, str] = {}
    if body:
        if charset_error:
            errors = {"body": charset_error}
            _keep_raw_body(params, body)
        else:
            errors = _body_params(request, body, charset, params)
    return Postback(
        method=request.method,
        query_string=query_string,
        body=body,
        params=params,
        errors=errors,
        client_ip=request_client_ip(request),
        headers=request.headers,
    )


def postback_from_payload(payload: str) -> Postback:
    """A pasted postback (the admin's test postback): a query string, a whole postback URL,
    or a JSON object body; parsed exactly as a request carrying it would be."""
    text = payload.strip()
    if text.startswith(("{", "[")):
        body = text.encode()
        params: dict[str, Any] = {}
        errors = _json_params(body, None, params)
        return Postback(method="POST", query_string=b"", body=body, params=params, errors=errors)
    query = urlsplit(text).query if "?" in text else text
    query_string = query.encode()
    return Postback(method="GET", query_string=query_string, body=b"", params=_query_params(query_string, None))


def _charset(request: HttpRequest) -> tuple[str | None, str | None]:
    """(the declared text encoding, or None) and an error when the declared one is not one
    (the WSGI entry point takes such a charset off the request and names it)."""
    refused = request.META.get(CHARSET_REFUSED)
    if refused is not None:
        return None, f"has charset '{refused[:40]}', which is not a text encoding (send UTF-8)"
    declared = (request.content_params or {}).get("charset")
    if not declared:
        return None, None
    encoding = text_encoding(declared)
    if encoding is None:
        return None, f"has charset '{declared[:40]}', which is not a text encoding (send UTF-8)"
    return encoding, None


def _query_params(query_string: bytes, charset: str | None) -> dict[str, Any]:
    """The query string's parameters, decoded and limited exactly as `request.GET` is,
    without building the QueryDict (its bookkeeping costs more than the parsing)."""
    if not query_string:
        return {}
    encoding = charset or settings.DEFAULT_CHARSET
    try:
        text = query_string.decode(encoding)
    except UnicodeDecodeError:
        text = query_string.decode("iso-8859-1")
    try:
        pairs = query_pairs(text, encoding=encoding, max_num_fields=settings.DATA_UPLOAD_MAX_NUMBER_FIELDS)
    except ValueError as exc:
        raise TooManyFieldsSent("More GET/POST parameters than DATA_UPLOAD_MAX_NUMBER_FIELDS.") from exc
    params: dict[str, Any] = {}
    for key, value in pairs:
        _add(params, key, value)
    return params


def _body_params(request: HttpRequest, body: bytes, charset: str | None, params: dict[str, Any]) -> dict[str, str]:
    """Merge the body's parameters into `params`; errors that make the postback a rejected one."""
    content_type = (request.content_type or "").lower()
    if content_type == "application/json" or content_type.endswith("+json"):
        return _json_params(body, charset, params)
    if content_type in FORM_CONTENT_TYPES:
        return _form_params(body, charset, params)
    if content_type == "multipart/form-data":
        try:
            form = request.POST
        except MultiPartParserError as exc:
            _keep_raw_body(params, body)
            return {"body": f"is not a valid multipart form ({exc})"}
        except TooManyFieldsSent:
            raise Refused(too_many_parameters()) from None
        _merge(params, _querydict_params(form))
        return {}
    _keep_raw_body(params, body)
    return {
        "body": f"has unsupported Content-Type '{content_type[:60]}'; send application/x-www-form-urlencoded "
        "or application/json"
    }


def _form_params(body: bytes, charset: str | None, params: dict[str, Any]) -> dict[str, str]:
    # A form in its declared charset (HTML forms encode their escapes in it too).
    encoding = charset or settings.DEFAULT_CHARSET
    try:
        text = body.decode(encoding)
    except UnicodeDecodeError:
        _keep_raw_body(params, body)
        return {"body": f"is not valid {encoding} text"}
    try:
        pairs = query_pairs(
            text, encoding=encoding, errors="strict", max_num_fields=settings.DATA_UPLOAD_MAX_NUMBER_FIELDS
        )
    except ValueError as exc:
        if isinstance(exc, UnicodeDecodeError):
            _keep_raw_body(params, body)
            return {"body": f"has percent-escapes that are not valid {encoding}"}
        raise Refused(too_many_parameters()) from exc
    for key, value in pairs:
        _add(params, key, value)
    return {}


def _json_params(body: bytes, charset: str | None, params: dict[str, Any]) -> dict[str, str]:
    try:
        document = body.decode(charset) if charset and charset != "utf-8" else body
    except UnicodeDecodeError:
        _keep_raw_body(params, body)
        return {"body": f"is not valid {charset} text"}
    try:
        data = json.loads(document, parse_constant=_reject_constant, parse_float=_finite_float)
    except (ValueError, RecursionError) as exc:
        _keep_raw_body(params, body)
        reason = str(exc) if isinstance(exc, _NotFinite) else "is not valid JSON"
        return {"body": reason}
    if not isinstance(data, dict):
        _keep_raw_body(params, body)
        return {"body": "must be a JSON object of parameter -> value"}
    _merge(params, data)
    return {}


class _NotFinite(ValueError):
    pass


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    # 1e999 parses as infinity, which no database column or JSON document can hold.
    value = float(text)
    if not math.isfinite(value):
        raise _NotFinite(f"has the number {text[:40]}, which is out of range")
    return value


def _querydict_params(querydict: QueryDict) -> dict[str, Any]:
    return {key: values[0] if len(values) == 1 else values for key, values in querydict.lists()}


def query_pairs(
    text: str, *, encoding: str, errors: str = "replace", max_num_fields: int | None
) -> list[tuple[str, str]]:
    """`urllib.parse.parse_qsl(text, keep_blank_values=True, ...)`, pair for pair, error for
    error: a name or value without `%` or `+` (nearly all of a postback's) is taken as it
    is instead of through two calls (10 parameters: 3 µs instead of 7). Raises ValueError
    past `max_num_fields`, UnicodeDecodeError from a bad escape when `errors` is "strict"."""
    if not text:
        return []
    if max_num_fields is not None and max_num_fields < 1 + text.count("&"):
        raise ValueError("Max number of fields exceeded")
    pairs = []
    for field_text in text.split("&"):
        if not field_text:
            continue
        name, _, value = field_text.partition("=")
        if "%" in name or "+" in name:
            name = unquote(name.replace("+", " "), encoding=encoding, errors=errors)
        if "%" in value or "+" in value:
            value = unquote(value.replace("+", " "), encoding=encoding, errors=errors)
        pairs.append((name, value))
    return pairs


def _add(params: dict[str, Any], key: str, value: Any) -> None:
    if key in params:
        before = params[key]
        params[key] = [*before, value] if isinstance(before, list) else [before, value]
    else:
        params[key] = value


def _merge(params: dict[str, Any], extra: dict[str, Any]) -> None:
    for key, value in extra.items():
        if key in params:
            before = params[key] if isinstance(params[key], list) else [params[key]]
            params[key] = before + (value if isinstance(value, list) else [value])
        else:
            params[key] = value


def raw_body_params(body: bytes, *, secret: str = "") -> dict[str, str]:
    """The body as received, as a parameter: `_raw_body` when it is UTF-8 text, else
    `_raw_body_base64`, so its bytes are kept exactly (but for the secret, masked)."""
    kept = body[:RAW_BODY_KEEP]
    try:
        return {RAW_BODY_PARAM: kept.decode("utf-8")}
    except UnicodeDecodeError:
        return {RAW_BODY_BASE64_PARAM: _base64_masked(base64.b64encode(kept).decode("ascii"), secret)}


def _base64_masked(value: str, secret: str) -> str:
    if not secret:
        return value
    data = base64.b64decode(value)
    for form in {secret.encode(), quote(secret, safe="").encode()}:
        data = data.replace(form, MASK.encode())
    return base64.b64encode(data).decode("ascii")


def _keep_raw_body(params: dict[str, Any], body: bytes) -> None:
    params.update(raw_body_params(body))


def storable_json(value: Any) -> Any:
    """`value` with what every database can store: NUL and lone surrogates become U+FFFD,
    numbers that are not finite become their text."""
    if type(value) is dict:
        # Parameters and headers: a flat dict of ASCII text is what nearly every postback
        # has, so its strings are checked here rather than in a call each.
        stored = {}
        for key, item in value.items():
            if type(key) is not str or not key.isascii() or "\x00" in key:
                key = storable_json(key)
            if type(item) is not str or not item.isascii() or "\x00" in item:
                item = storable_json(item)
            stored[key] = item
        return stored
    if isinstance(value, str):
        if "\x00" in value:
            value = value.replace("\x00", "\ufffd")
        if value.isascii():
            return value
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates (from a JSON \ud800 escape)
            return "".join("\ufffd" if "\ud800" <= char <= "\udfff" else char for char in value)
        return value
    if isinstance(value, dict):
        return {storable_json(key): storable_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [storable_json(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
