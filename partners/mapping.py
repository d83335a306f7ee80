"""Mapping rules: a partner's parameters -> our canonical conversion fields.

`Partner.parameter_mapping` is {our_field: partner_param}. For every canonical field
the value is read from the partner's parameter first, then from our own field name, so
both the partner's macros (`aff_sub`) and our spelling (`sub_id`) work. Values are
coerced here, once, and every problem is collected per field so the sender learns
all of them in one response.
"""

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, tzinfo
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any, Literal
from urllib.parse import urlencode

from partners.currencies import ISO_4217_CODES
from partners.lifecycle import status_lookup

TEXT = "text"
AMOUNT = "amount"
DATETIME = "datetime"
STATUS = "status"
CURRENCY = "currency"
STATUS_RAW_MAX_LENGTH = 50

AMOUNT_QUANTUM = Decimal("0.01")
# NUMERIC(15, 2): 13 digits before the point.
AMOUNT_MAX_ADJUSTED_EXPONENT = 12
AMOUNT_LIMIT_TEXT = "9999999999999.99"
DATETIME_MIN = datetime(1970, 1, 1, tzinfo=UTC)
DATETIME_MAX = datetime(2999, 12, 31, 23, 59, 59, tzinfo=UTC)
# A partner's parameter name stands in a URL twice: as a parameter (`aff_sub=...`) and as a
# macro (`{aff_sub}`), so it needs no escaping in either. The test postback's search for
# unfilled macros reads the same characters.
PARAMETER_NAME_RE = re.compile(r"^[A-Za-z0-9_.:-]+$")
PARAMETER_NAME_MAX_LENGTH = 100  # POSTBACK_MAX_PARAM_NAME_LENGTH's default: a longer one is refused
TOKEN_PARAM = "token"  # noqa: S105 (the parameter that carries the partner's secret)
UNIX_SECONDS_RE = re.compile(r"^\d{1,11}(\.\d{1,9})?$")
DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


@dataclass(frozen=True)
class CanonicalField:
    name: str
    kind: Literal["text", "amount", "datetime", "status", "currency"]
    max_length: int | None = None
    required: bool = False


CANONICAL_FIELDS: dict[str, CanonicalField] = {
    f.name: f
    for f in (
        CanonicalField("conversion_id", TEXT, 50, required=True),
        CanonicalField("offer_id", TEXT, 50),
        CanonicalField("offer_name", TEXT, 1000),
        CanonicalField("conversion_datetime", DATETIME),
        CanonicalField("usd_sale_amount", AMOUNT),
        CanonicalField("usd_earning", AMOUNT),
        CanonicalField("media_id", TEXT, 255),
        CanonicalField("sub_id", TEXT, 255),
        CanonicalField("click_id", TEXT, 255),
        CanonicalField("status", STATUS, STATUS_RAW_MAX_LENGTH),
        CanonicalField("currency", CURRENCY, 3),
        CanonicalField("sale_amount_local", AMOUNT),
        CanonicalField("payout_local", AMOUNT),
    )
}


# A plausible value per field, for the example postbacks the admin offers to test.
EXAMPLE_VALUES: dict[str, str] = {
    "conversion_id": "TEST-1001",
    "offer_id": "42",
    "offer_name": "Example-offer",
    "conversion_datetime": "2025-01-15T10:30:00",
    "usd_sale_amount": "25.00",
    "usd_earning": "2.50",
    "media_id": "media-1",
    "sub_id": "sub-1",
    "click_id": "click-1",
    "status": "approved",
    "currency": "USD",
    "sale_amount_local": "25.00",
    "payout_local": "2.50",
}


def parameter_name_error(name: str) -> str | None:
    """Why `name` cannot be a partner's parameter name, or None."""
    if name == TOKEN_PARAM:
        return f"'{TOKEN_PARAM}' is reserved for the partner's postback secret and is never stored; choose another."
    if len(name) > PARAMETER_NAME_MAX_LENGTH:
        return f"a parameter name is at most {PARAMETER_NAME_MAX_LENGTH} characters."
    if not PARAMETER_NAME_RE.match(name):
        return (
            f"'{_shorten(name)}' cannot stand in a URL as it is: use letters, digits, '_', '.', ':' or '-' "
            "(no spaces, '&', '=', '?', '#', '%', '+' or braces; enter the macro's name without its braces)."
        )
    return None


def postback_example_rows(
    *, mapping: Mapping[str, str], status_mapping: Mapping[str, str] | None = None
) -> list[tuple[str, str, str]]:
    """(our field, the partner's parameter, an example value) for every mapped field and
    conversion_id: the partner's own names, ours where it has none."""
    statuses = dict(status_mapping or {})
    rows = []
    for name, spec in CANONICAL_FIELDS.items():
        param = mapping.get(name) or (name if spec.required else None)
        if not param:
            continue
        value = EXAMPLE_VALUES[name]
        if spec.kind == STATUS and statuses:
            # A value this partner sends, meaning approved when it has one.
            value = next((raw for raw, ours in statuses.items() if ours == "approved"), next(iter(statuses)))
        rows.append((name, param, value))
    return rows


def postback_example(*, mapping: Mapping[str, str], status_mapping: Mapping[str, str] | None = None) -> str:
    """A query string as the partner would send it (postback_example_rows)."""
    rows = postback_example_rows(mapping=mapping, status_mapping=status_mapping)
    return urlencode([(param, value) for _, param, value in rows], safe=":")


@dataclass
class MappedPostback:
    """What a postback's parameters mean in our fields."""

    values: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    received: tuple[str, ...] = ()

    @property
    def is_valid(self) -> bool:
        return not self.errors

    @property
    def ignored(self) -> list[str]:
        """Parameters received that fill none of our fields."""
        used = set(self.sources.values())
        return [name for name in self.received if name not in used]


class CoercionError(ValueError):
    """A value that cannot become the field's type; the message names the problem."""


def postback_map(
    *,
    mapping: Mapping[str, str],
    params: Mapping[str, Any],
    tz: tzinfo,
    status_mapping: Mapping[str, str] | None = None,
) -> MappedPostback:
    """Map and coerce `params` (parameter name -> value) onto our canonical fields.

    The partner's status value becomes one of our statuses through `status_mapping`;
    the value as sent is kept as `status_raw`.
    """
    result = MappedPostback()
    statuses = status_lookup(status_mapping or {})
    for name, spec in CANONICAL_FIELDS.items():
        partner_param = mapping.get(name)
        if partner_param is not None and partner_param in params:
            source = partner_param
        elif name in params:
            source = name
        else:
            if spec.required:
                hint = f"'{partner_param}' or '{name}'" if partner_param and partner_param != name else f"'{name}'"
                result.errors[name] = f"is required (send {hint})"
            continue
        raw = params[source]
        if isinstance(raw, list):
            # A repeated parameter: the last value wins, all of them stay in raw_data.
            raw = raw[-1] if raw else None
        result.sources[name] = source
        try:
            value = coerce(spec, raw, tz)
            if spec.kind == STATUS and value is not None:
                result.values["status_raw"] = value
                value = coerce_status(value, statuses)
        except CoercionError as exc:
            result.errors[name] = f"{source}: {exc}"
            continue
        if value is None:
            if spec.required:
                result.errors[name] = f"{source}: must not be empty"
            continue
        result.values[name] = value
    result.received = tuple(params)
    return result


def coerce(spec: CanonicalField, raw: Any, tz: tzinfo) -> Any:
    """Coerce one received value to `spec`'s type; None for an absent/empty value."""
    if raw is None:
        return None
    if isinstance(raw, (dict, list)):
        raise CoercionError("must be a single value, not a JSON object or list")
    if spec.kind == AMOUNT:
        return coerce_amount(raw)
    if spec.kind == DATETIME:
        return coerce_datetime(raw, tz)
    if spec.kind == CURRENCY:
        return coerce_currency(raw)
    return coerce_text(raw, spec.max_length)


def coerce_status(text: str, statuses: Mapping[str, str]) -> str:
    """The partner's status value as one of ours; an unknown value is an error naming it."""
    status = statuses.get(text.lower())
    if status is None:
        known = sorted(statuses)
        raise CoercionError(f"{_shorten(text)!r} is not a known status (known: {', '.join(known)})")
    return status


def coerce_currency(raw: Any) -> str | None:
    """An ISO 4217 code, upper-cased."""
    text = coerce_text(raw, None)
    if text is None:
        return None
    code = text.upper()
    if code not in ISO_4217_CODES:
        raise CoercionError(f"{_shorten(text)!r} is not an ISO 4217 currency code")
    return code


def coerce_text(raw: Any, max_length: int | None) -> str | None:
    if isinstance(raw, bool):
        text = "true" if raw else "false"
    else:
        text = str(raw).strip()
    if not text:
        return None
    if "\x00" in text:
        raise CoercionError("contains a NUL character")
    if not _is_encodable(text):
        raise CoercionError("is not valid Unicode text")
    if max_length is not None and len(text) > max_length:
        raise CoercionError(f"is {len(text)} characters long; the limit is {max_length}")
    return text


def coerce_amount(raw: Any) -> Decimal | None:
    """Decimal(15,2); more than 2 decimals are rounded half-up (0.125 -> 0.13)."""
    if isinstance(raw, bool):
        raise CoercionError(f"{raw!r} is not a number")
    text = str(raw).strip()
    if not text:
        return None
    try:
        amount = Decimal(text)
    except (InvalidOperation, ValueError):
        raise CoercionError(f"{_shorten(text)!r} is not a number") from None
    if not amount.is_finite():
        raise CoercionError(f"{_shorten(text)!r} is not a finite number")
    if amount.adjusted() > AMOUNT_MAX_ADJUSTED_EXPONENT:
        raise CoercionError(f"{_shorten(text)!r} does not fit (largest is {AMOUNT_LIMIT_TEXT})")
    rounded = amount.quantize(AMOUNT_QUANTUM, rounding=ROUND_HALF_UP)
    if rounded.adjusted() > AMOUNT_MAX_ADJUSTED_EXPONENT:
        raise CoercionError(f"{_shorten(text)!r} does not fit (largest is {AMOUNT_LIMIT_TEXT})")
    return rounded


def coerce_datetime(raw: Any, tz: tzinfo) -> datetime | None:
    """Unix seconds, YYYY-MM-DD, YYYY-MM-DD HH:MM:SS or ISO 8601; naive means `tz`."""
    if isinstance(raw, bool):
        raise CoercionError(f"{raw!r} is not a date/time")
    text = str(raw).strip()
    if not text:
        return None
    try:
        if UNIX_SECONDS_RE.match(text):
            moment = datetime.fromtimestamp(float(Decimal(text)), tz=UTC)
        elif DATE_RE.match(text):
            day = date.fromisoformat(text)
            moment = datetime(day.year, day.month, day.day, tzinfo=tz)
        else:
            moment = datetime.fromisoformat(text)
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=tz)
    except (ValueError, OverflowError, OSError):
        raise CoercionError(
            f"{_shorten(text)!r} is not a date/time (use YYYY-MM-DD, YYYY-MM-DD HH:MM:SS, ISO 8601 or Unix seconds)"
        ) from None
    try:
        in_range = DATETIME_MIN <= moment <= DATETIME_MAX
    except OverflowError:
        in_range = False
    if not in_range:
        raise CoercionError(f"{_shorten(text)!r} is outside 1970-01-01..2999-12-31")
    return moment


def _is_encodable(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _shorten(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def postback_url_template(*, base_url: str, endpoint_path: str, mapping: Mapping[str, str]) -> str:
    """The URL to paste into a partner's dashboard: our field names, the partner's macros in braces.

    The partner replaces `{aff_sub}` with the value; we read it back as `sub_id`, our own
    name, which every mapping accepts. Required fields go in even when unmapped.
    """
    pairs = []
    for name, spec in CANONICAL_FIELDS.items():
        macro = mapping.get(name) or (name if spec.required else None)
        if macro:
            pairs.append(f"{name}={{{macro}}}")
    url = f"{base_url.rstrip('/')}/partner/{endpoint_path.strip('/')}"
    return f"{url}?{'&'.join(pairs)}" if pairs else url
