"""Network report formats: what a report's rows mean in our fields, and how one compares
with our original of its conversion_id.

A CSV upload names its columns like the partner's postbacks: it is read through the
partner's parameter mapping, the source's column mapping over it. An API report is in the
network's own published format (InvolveAsia: REPORT_FIELDS), which is read by default; the
source's column mapping only overrides it. A run keeps the mapping it read with
(`ReconciliationRun.mapping`: our field -> the report's column, and, under keys starting
with "@", the format, the time zone of the report's times and the currency an API report
was converted to on request), so recovering from the run reads a row exactly as the run did.

Amounts are compared only where the report carries them in a currency ours are in: its
USD amounts with ours; its local amounts when it states our currency (or none); a report
in another currency is a currency difference whose local amounts are not compared. A
report is no authority on our currency: applying it never changes one.
"""

import datetime
import logging
import zoneinfo
from collections.abc import Iterable, Iterator, Mapping
from decimal import Decimal
from typing import IO, Any

from django.utils import timezone

from conversions.ingest.decide import LIFECYCLE_FIELDS, money_elsewhere
from partners.mapping import CoercionError, MappedPostback, coerce_datetime, postback_map
from partners.models import Partner
from reconciliation.models import (
    AMOUNT_DIFFERS,
    CSV_UPLOAD,
    CURRENCY_DIFFERS,
    INVOLVE_ASIA_API,
    MATCHED,
    MISSING_HERE,
    STATUS_DIFFERS,
    ReportSource,
)
from reconciliation.sources import ReportError, ReportRow, csv_report_rows, involve_asia_first_page, involve_asia_rows

logger = logging.getLogger("conversions.reconciliation")

# InvolveAsia's published record, read onto our fields: our field -> its field. A record's
# `sale_amount` and `payout` are in its `currency` (`base_payout` and `bonus_payout` are
# parts of `payout`, not added to it); a record in USD gives our USD amounts too.
INVOLVE_ASIA_FIELDS = {
    "conversion_id": "conversion_id",
    "offer_id": "offer_id",
    "offer_name": "offer_name",
    "conversion_datetime": "datetime_conversion",
    "sale_amount_local": "sale_amount",
    "payout_local": "payout",
    "currency": "currency",
    "sub_id": "aff_sub1",
    "status": "conversion_status",
}
REPORT_FIELDS = {INVOLVE_ASIA_API: INVOLVE_ASIA_FIELDS}
# How a run read its report, kept with its mapping (not our fields: they start with "@").
FORMAT_KEY = "@format"
ZONE_KEY = "@timezone"
CONVERTED_KEY = "@converted_to"

USD = "USD"
USD_AMOUNTS = ("usd_sale_amount", "usd_earning")
LOCAL_AMOUNTS = ("sale_amount_local", "payout_local")
COMPARED_AMOUNTS = (*USD_AMOUNTS, *LOCAL_AMOUNTS)
# "Amount differs" means beyond a cent: amounts are kept to the cent, rounded half-up.
AMOUNT_TOLERANCE = Decimal("0.01")
# What a source preview reads: the first page of the last days, a few records.
PREVIEW_DAYS = 7


# --- reading ---------------------------------------------------------------------------


def report_mapping(*, partner: Partner, source: ReportSource) -> dict[str, str]:
    """How the source's report is read: our field -> its column (the network's published
    fields, or for a CSV the partner's parameter mapping, under the source's column
    mapping), with the format, the report's time zone and, for an API report converted on
    request, its currency."""
    published = REPORT_FIELDS.get(source.kind)
    columns = dict(published) if published is not None else dict(partner.parameter_mapping or {})
    columns.update(source.column_mapping or {})
    columns[FORMAT_KEY] = source.kind
    columns[ZONE_KEY] = source.report_zone_name
    if published is not None and source.preferred_currency:
        columns[CONVERTED_KEY] = source.preferred_currency.upper()
    return columns


def report_row_map(*, partner: Partner, mapping: Mapping[str, str], values: Mapping[str, Any]) -> MappedPostback:
    """A report row's values on our fields, coerced exactly like a postback's parameters
    (its times in the report's time zone, its statuses through the partner's mapping)."""
    columns = {name: column for name, column in mapping.items() if not name.startswith("@")}
    zone = _zone(mapping.get(ZONE_KEY)) or partner.tzinfo
    result = postback_map(mapping=columns, params=values, tz=zone, status_mapping=partner.status_mapping)
    if mapping.get(FORMAT_KEY) in REPORT_FIELDS:
        _record_currency_read(result, converted_to=mapping.get(CONVERTED_KEY))
    return result


def _record_currency_read(result: MappedPostback, *, converted_to: str | None) -> None:
    """A network record's amounts are in its `currency`: in USD they are our USD amounts
    too. Converted to USD on request, USD is the report's currency, not the conversion's:
    they are only our USD amounts, and the record says nothing of the conversion's own."""
    values, sources = result.values, result.sources
    if values.get("currency") != USD:
        return
    for usd, local in zip(USD_AMOUNTS, LOCAL_AMOUNTS, strict=True):
        if usd not in sources and local in values:
            values[usd], sources[usd] = values[local], sources[local]
    if converted_to == USD:
        for name in ("currency", *LOCAL_AMOUNTS):
            values.pop(name, None)
            sources.pop(name, None)


def _zone(name: str | None) -> zoneinfo.ZoneInfo | None:
    try:
        return zoneinfo.ZoneInfo(name) if name else None
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return None


def partner_days(
    *, partner: Partner, date_from: datetime.date, date_to: datetime.date
) -> tuple[datetime.datetime, datetime.datetime]:
    """[start, end) of the partner's days date_from..date_to (included), in its time zone."""
    zone = partner.tzinfo
    start = datetime.datetime.combine(date_from, datetime.time.min, tzinfo=zone)
    end = datetime.datetime.combine(date_to + datetime.timedelta(days=1), datetime.time.min, tzinfo=zone)
    return start, end


def report_days(
    *, source: ReportSource, date_from: datetime.date, date_to: datetime.date
) -> tuple[datetime.date, datetime.date]:
    """The report's days (in its time zone) that cover the partner's days date_from..date_to:
    the same days, or one more on a side where the zones' midnights differ."""
    start, end = partner_days(partner=source.partner, date_from=date_from, date_to=date_to)
    zone = _zone(source.report_zone_name) or source.partner.tzinfo
    return start.astimezone(zone).date(), (end - datetime.timedelta(microseconds=1)).astimezone(zone).date()


def source_report_rows(
    *, source: ReportSource, date_from: datetime.date, date_to: datetime.date, upload: IO[bytes] | None = None
) -> Iterator[ReportRow]:
    """The source's report of the partner's days date_from..date_to: the uploaded CSV as it
    is, or the API's records of the network's days that cover them, less those whose
    conversion time falls on another partner day (so a conversion near midnight is
    compared on the partner's day, never listed as missing on both sides)."""
    if source.kind == INVOLVE_ASIA_API:
        first, last = report_days(source=source, date_from=date_from, date_to=date_to)
        start, end = partner_days(partner=source.partner, date_from=date_from, date_to=date_to)
        rows = involve_asia_rows(source=source, date_from=first, date_to=last)
        mapping = report_mapping(partner=source.partner, source=source)
        return _rows_within(rows, mapping=mapping, partner=source.partner, start=start, end=end)
    if upload is None:
        raise ReportError("a CSV source needs an uploaded file")
    return csv_report_rows(upload)


def _rows_within(
    rows: Iterable[ReportRow],
    *,
    mapping: Mapping[str, str],
    partner: Partner,
    start: datetime.datetime,
    end: datetime.datetime,
) -> Iterator[ReportRow]:
    column = mapping.get("conversion_datetime", "conversion_datetime")
    zone = _zone(mapping.get(ZONE_KEY)) or partner.tzinfo
    outside = 0
    for row in rows:
        try:
            moment = coerce_datetime(row.values.get(column), zone)
        except CoercionError:
            moment = None  # the comparison names it
        if moment is not None and not start <= moment < end:
            outside += 1
            continue
        yield row
    if outside:
        logger.info("report: %d records of the network's days fall on other partner days: left out", outside)


# --- comparing --------------------------------------------------------------------------


def report_row_compare(*, ours: Mapping[str, Any] | None, theirs: Mapping[str, Any]) -> tuple[str, dict[str, list]]:
    """What a report row is against our original (None: we have none): its kind, and
    field -> [ours, the report's] for every field that differs (a report in another
    currency says so, and that its local amounts were not compared)."""
    if ours is None:
        return MISSING_HERE, {}
    differences: dict[str, list] = {}
    for name in report_row_comparable(ours=ours, theirs=theirs):
        reported, stored = theirs[name], ours.get(name)
        if name in COMPARED_AMOUNTS:
            differs = stored is None or abs(stored - reported) > AMOUNT_TOLERANCE
        else:
            differs = stored != reported
        if differs:
            differences[name] = [None if stored is None else str(stored), str(reported)]
    reported_currency, our_currency = theirs.get("currency"), ours.get("currency")
    if reported_currency is not None and reported_currency != our_currency:
        differences["currency"] = [our_currency, reported_currency]
        if any(theirs.get(name) is not None for name in LOCAL_AMOUNTS):
            differences["local amounts"] = [
                f"in {our_currency or 'no currency'}",
                f"in {reported_currency}: not compared",
            ]
    if "status" in differences:
        kind = STATUS_DIFFERS
    elif any(name in differences for name in COMPARED_AMOUNTS):
        kind = AMOUNT_DIFFERS
    elif "currency" in differences:
        kind = CURRENCY_DIFFERS
    else:
        kind = MATCHED
    return kind, differences


def report_row_comparable(*, ours: Mapping[str, Any], theirs: Mapping[str, Any]) -> tuple[str, ...]:
    """The report row's fields that can be set against ours: its status, its USD amounts,
    and its local amounts when it states our currency or none. Not an amount of a currency
    ours has none in while we have the other's (the same money, not comparable without a
    rate); never its currency (a report is no authority on ours)."""
    local_comparable = theirs.get("currency") in (None, ours.get("currency"))
    names = []
    for name in ("status", *COMPARED_AMOUNTS):
        if theirs.get(name) is None:
            continue
        if name in LOCAL_AMOUNTS and not local_comparable:
            continue
        if ours.get(name) is None and money_elsewhere(known=ours, name=name):
            continue
        names.append(name)
    return tuple(names)


def report_row_applicable(*, ours: Mapping[str, Any], theirs: Mapping[str, Any]) -> dict[str, Any]:
    """The report row's values that "apply the report" may bring to our original: every
    value but the status and money it cannot compare, and never its currency."""
    comparable = set(report_row_comparable(ours=ours, theirs=theirs))
    values = {name: value for name, value in theirs.items() if name not in LIFECYCLE_FIELDS or name in comparable}
    if "status" not in comparable:
        values.pop("status_raw", None)
    return values


# --- preview ----------------------------------------------------------------------------


def source_preview(*, source: ReportSource, limit: int = 5) -> dict[str, Any]:
    """The first records of the source's API for its last PREVIEW_DAYS days (the network's
    days), read as a run would read them: one authentication and one request.

    {"date_from", "date_to" (the network's days, ISO), "count" (the API's count of the
    days' records), "records": [{"ours": our field -> value as text, "unread": the record's
    fields no field of ours reads, "errors": our field -> what is wrong}], "error": ""},
    or with "error" saying why nothing could be read (and no records).
    """
    preview: dict[str, Any] = {"date_from": None, "date_to": None, "count": None, "records": [], "error": ""}
    if source.kind == CSV_UPLOAD or source.kind not in REPORT_FIELDS:
        preview["error"] = "a CSV source has no API to read: upload its report with a run"
        return preview
    zone = _zone(source.report_zone_name) or source.partner.tzinfo
    date_to = timezone.now().astimezone(zone).date()
    date_from = date_to - datetime.timedelta(days=PREVIEW_DAYS - 1)
    preview["date_from"], preview["date_to"] = date_from.isoformat(), date_to.isoformat()
    try:
        page = involve_asia_first_page(source=source, date_from=date_from, date_to=date_to, limit=limit)
    except ReportError as exc:
        preview["error"] = str(exc)
        return preview
    mapping = report_mapping(partner=source.partner, source=source)
    preview["count"] = page.count
    for record in page.records[:limit]:
        if not isinstance(record, dict):
            preview["records"].append({"ours": {}, "unread": {}, "errors": {"record": "is not an object"}})
            continue
        mapped = report_row_map(partner=source.partner, mapping=mapping, values=record)
        read = set(mapped.sources.values())
        preview["records"].append(
            {
                "ours": {name: _shown(value) for name, value in mapped.values.items()},
                "unread": {column: value for column, value in record.items() if column not in read},
                "errors": dict(mapped.errors),
            }
        )
    return preview


def _shown(value: Any) -> str:
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    return str(value)
