"""Request limits on the postback endpoint, checked before any database work.

A postback is a handful of short parameters; anything far larger is a mistake or an
attack, refused with a 4xx that says which limit it broke.
"""

import json
from collections.abc import Mapping
from typing import Any

from django.conf import settings
from django.http import HttpRequest

from conversions.ingest.refusals import Refusal

# Where a body that could not be read is kept among the parameters: parameters we add
# ourselves (bounded by the body limit, not by the parameter limits).
RAW_BODY_PARAM = "_raw_body"
RAW_BODY_BASE64_PARAM = "_raw_body_base64"
RAW_BODY_PARAMS = frozenset({RAW_BODY_PARAM, RAW_BODY_BASE64_PARAM})


def request_size_check(request: HttpRequest) -> Refusal | None:
    """A 413 when the declared body is larger than POSTBACK_MAX_BODY_BYTES (before reading it)."""
    limit = settings.POSTBACK_MAX_BODY_BYTES
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    return body_too_large(declared) if declared > limit else None


def body_too_large(declared: int | None = None) -> Refusal:
    limit = settings.POSTBACK_MAX_BODY_BYTES
    size = f"{declared} bytes" if declared is not None else "too large"
    return Refusal(
        reason="body_too_large",
        message=f"The request body is {size}; the limit is {limit} bytes",
        errors={"body": f"is {size}; the limit is {limit} bytes"},
    )


def too_many_parameters() -> Refusal:
    limit = settings.POSTBACK_MAX_PARAMS
    return Refusal(
        reason="too_many_parameters",
        message=f"Too many parameters; the limit is {limit}",
        errors={"parameters": f"more than {limit} parameters"},
    )


def params_present_check(params: Mapping[str, Any], body_errors: Mapping[str, str]) -> Refusal | None:
    """A 400 when the request carries nothing at all: a browser or a monitor opening the URL,
    not a network reporting a conversion (a body that could not be read is stored as rejected)."""
    if params or body_errors:
        return None
    return Refusal(
        reason="no_parameters",
        message="The postback carries no parameters: send the conversion's fields in the query string "
        "or the body, e.g. ?conversion_id=...",
        errors={"parameters": "none were sent"},
    )


def params_limits_check(params: Mapping[str, Any]) -> Refusal | None:
    """A 400 when there are too many parameters, or a name or value is too long."""
    max_count = settings.POSTBACK_MAX_PARAMS
    max_name = settings.POSTBACK_MAX_PARAM_NAME_LENGTH
    max_value = settings.POSTBACK_MAX_PARAM_VALUE_LENGTH
    count = 0
    for name, value in params.items():
        if name in RAW_BODY_PARAMS:
            continue
        values = value if type(value) is list else (value,)
        count += len(values)
        if count > max_count:
            return too_many_parameters()
        if len(name) > max_name:
            shown = name[:40] + "…"
            return Refusal(
                reason="parameter_name_too_long",
                message=f"A parameter name is {len(name)} characters long; the limit is {max_name}",
                errors={shown: f"parameter name is {len(name)} characters long; the limit is {max_name}"},
            )
        for item in values:
            length = len(item) if type(item) is str else _length(item)
            if length > max_value:
                return Refusal(
                    reason="parameter_value_too_long",
                    message=f"Parameter '{name}' is {length} characters long; the limit is {max_value}",
                    errors={name: f"is {length} characters long; the limit is {max_value}"},
                )
    return None


def _length(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if value is None or isinstance(value, bool | int | float):
        return len(str(value))
    return len(json.dumps(value, default=str))
