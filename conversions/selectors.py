"""Reads of a partner's conversions: filtered lists, keyset pages, exports and stats.

Every query runs on the partner's own database (`.using(partner.database_alias)`).
Lists are ordered newest first on (received_at, id), and pages continue after a cursor
holding the last row's (received_at, id), so a page never shifts when new postbacks
arrive (they land above the cursor) and deep pages cost as much as the first.
"""

import base64
import binascii
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db import connections
from django.db.models import Count, DateTimeField, Q, QuerySet, Sum, TextField
from django.db.models.functions import Cast, Left, TruncDate

from conversions.models import PartnerConversion, row_kind
from conversions.outcomes import RowKind
from partners.lifecycle import APPROVED, PAID, PENDING, REJECTED, STATUSES
from partners.models import Partner

# Columns the API shows, in model order; columns added to the model later show up by
# themselves. Left out: the partner (implied by the URL), what the sender's request
# looked like (raw parameters, headers, address), the row's insert time and the ingest's digests.
# The replay digests (request_digests) are the ingest's own bookkeeping.
HIDDEN_COLUMNS = frozenset({"partner_id", "raw_data", "request_headers", "request_ip", "created_at", "request_digests"})
CONVERSION_FIELDS = tuple(f for f in PartnerConversion._meta.concrete_fields if f.name not in HIDDEN_COLUMNS)
# Output names (`duplicate_of`) and the attributes that hold them (`duplicate_of_id`).
CONVERSION_COLUMNS = tuple(f.name for f in CONVERSION_FIELDS)
CONVERSION_ATTNAMES = tuple(f.attname for f in CONVERSION_FIELDS)
DATETIME_ATTNAMES = tuple(f.attname for f in CONVERSION_FIELDS if isinstance(f, DateTimeField))
TEXT_SUFFIX = "_as_text"

TIME_FIELDS = ("received_at", "conversion_datetime")
TEXT_FILTERS = ("offer_name", "offer_id", "sub_id", "media_id", "click_id", "conversion_id", "status", "currency")


CENT = Decimal("0.01")


class InvalidCursor(ValueError):
    """A pagination cursor that this service did not issue."""


@dataclass(frozen=True)
class Cursor:
    """The position after the last row of a page: its (received_at, id)."""

    received_at: datetime
    id: int

    def encode(self) -> str:
        text = f"{self.received_at.astimezone(UTC).isoformat()}|{self.id}"
        return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str) -> "Cursor":
        try:
            text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
            moment, _, pk = text.partition("|")
            received_at = datetime.fromisoformat(moment)
            if received_at.tzinfo is None:
                raise ValueError("naive")
            return cls(received_at=received_at, id=int(pk))
        except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
            raise InvalidCursor("is not a cursor from a previous page's `next` link") from exc


@dataclass(frozen=True)
class TimeRange:
    """start <= time < end (either open), on `time_field`."""

    time_field: str = "received_at"
    start: datetime | None = None
    end: datetime | None = None

    def q(self) -> Q:
        q = Q()
        if self.start is not None:
            q &= Q(**{f"{self.time_field}__gte": self.start})
        if self.end is not None:
            q &= Q(**{f"{self.time_field}__lt": self.end})
        return q

    def previous(self) -> "TimeRange":
        """The range of the same length that ends where this one starts (both ends needed)."""
        if self.start is None or self.end is None:
            raise ValueError("an open range has no previous period")
        return TimeRange(time_field=self.time_field, start=self.start - (self.end - self.start), end=self.start)


@dataclass(frozen=True)
class ConversionFilters:
    """What an analyst asked for; every part is optional."""

    time_range: TimeRange = field(default_factory=TimeRange)
    text: dict[str, str] = field(default_factory=dict)
    is_duplicate: bool | None = None
    has_error: bool | None = None


@dataclass(frozen=True)
class ConversionPage:
    rows: list[dict[str, Any]]  # CONVERSION_ATTNAMES -> value, plus `outcome`
    next_cursor: Cursor | None


# Which of our statuses (partners.lifecycle) count as approved, pending and rejected by the
# network: paid follows approved; an original without a status is not decided yet. The one
# definition of docs/numbers.md, shared by the dashboards, the /stats API and publisher reports.
APPROVED_STATUSES = (APPROVED, PAID)
REJECTED_STATUSES = (REJECTED,)
PENDING_STATUSES = (PENDING, None)
STATUS_CLASSES = ("approved", "pending", "network_rejected")
RATE = Decimal("0.0001")


def status_class(status: str | None) -> str:
    """approved, pending or network_rejected: what an original of this status counts as."""
    if status in APPROVED_STATUSES:
        return "approved"
    if status in REJECTED_STATUSES:
        return "network_rejected"
    return "pending"


@dataclass(slots=True)
class Revenue:
    """Originals of one status class and their amounts."""

    originals: int = 0
    usd_sale_amount: Decimal = Decimal("0.00")
    usd_earning: Decimal = Decimal("0.00")


def rate(part: int, whole: int) -> Decimal | None:
    """part / whole to 4 decimal places (0.2500 is 25 %); None when there is nothing to divide."""
    return (Decimal(part) / Decimal(whole)).quantize(RATE) if whole else None


@dataclass(slots=True)
class Totals:
    """Counts by outcome, and the amounts of the originals (duplicates and rejects never count).

    `rejected` counts invalid postbacks (stored with a processing_error); the sales the network
    rejected are `network_rejected`, one of the originals' status classes.
    """

    originals: int = 0
    duplicates: int = 0
    rejected: int = 0
    usd_sale_amount: Decimal = Decimal("0.00")
    usd_earning: Decimal = Decimal("0.00")
    approved: Revenue = field(default_factory=Revenue)
    pending: Revenue = field(default_factory=Revenue)
    network_rejected: Revenue = field(default_factory=Revenue)

    @property
    def invalid(self) -> int:
        return self.rejected

    @property
    def approval_rate(self) -> Decimal | None:
        """Approved originals / originals."""
        return rate(self.approved.originals, self.originals)

    @property
    def rejection_rate(self) -> Decimal | None:
        """Originals the network rejected / originals."""
        return rate(self.network_rejected.originals, self.originals)

    @property
    def open_usd_sale_amount(self) -> Decimal:
        """Approved + pending sales: every sale not rejected (a publisher report's total)."""
        return self.approved.usd_sale_amount + self.pending.usd_sale_amount

    @property
    def open_usd_earning(self) -> Decimal:
        """Approved + pending earnings: ours unless the network rejects them."""
        return self.approved.usd_earning + self.pending.usd_earning

    def add(self, *, outcome: RowKind, count: int, sale: Decimal | None, earning: Decimal | None) -> None:
        if outcome is RowKind.ORIGINAL:
            self.add_originals(count=count, sale=cents(sale), earning=cents(earning))
        elif outcome is RowKind.DUPLICATE:
            self.duplicates += count
        else:
            self.rejected += count

    def add_originals(self, *, count: int, sale: Decimal, earning: Decimal, status_of: str | None = None) -> None:
        """Originals with their amounts already in cents (see cents()), of status class
        `status_of` (status_class()) when known."""
        self.originals += count
        self.usd_sale_amount += sale
        self.usd_earning += earning
        if status_of is not None:
            revenue = getattr(self, status_of)
            revenue.originals += count
            revenue.usd_sale_amount += sale
            revenue.usd_earning += earning


def cents(amount: Decimal | float | None) -> Decimal:
    """A sum of amounts as cents: SQLite's sums carry float noise (4.04000000000000)."""
    return Decimal(amount or 0).quantize(CENT)


@dataclass(slots=True)
class DayTotals(Totals):
    day: date | None = None
    # The day's accepted postbacks by our status (the dashboard's split; the API shows the totals).
    statuses: dict[str | None, Totals] = field(default_factory=dict)


@dataclass(slots=True)
class StatusTotals(Totals):
    status: str | None = None


@dataclass(slots=True)
class OfferTotals(Totals):
    offer_id: str | None = None
    offer_name: str | None = None


@dataclass(slots=True)
class PrefixTotals(Totals):
    prefix: str | None = None  # None: postbacks without a sub_id


@dataclass(frozen=True)
class ConversionStats:
    time_range: TimeRange
    totals: Totals
    days: list[DayTotals]
    top_offers: list[OfferTotals]
    by_status: list[StatusTotals]


def conversion_queryset(*, partner: Partner, filters: ConversionFilters) -> QuerySet[PartnerConversion]:
    """The partner's conversions matching `filters`, newest first."""
    # partner_id is the same on every row here, but naming it lets the
    # (partner_id, conversion_id) index serve conversion_id look-ups.
    queryset = PartnerConversion.objects.using(partner.database_alias).filter(
        filters.time_range.q(), partner_id=partner.pk
    )
    text = {name: value for name, value in filters.text.items() if name in TEXT_FILTERS}
    if text:
        queryset = queryset.filter(**text)
    if filters.is_duplicate is not None:
        queryset = queryset.filter(is_duplicate=filters.is_duplicate)
    if filters.has_error is not None:
        queryset = queryset.filter(processing_error__isnull=not filters.has_error)
    return queryset.order_by("-received_at", "-id")


def _after(queryset: QuerySet[PartnerConversion], cursor: Cursor | None) -> QuerySet[PartnerConversion]:
    if cursor is None:
        return queryset
    # (received_at, id) < cursor. The `lte` half is what lets the (received_at, id)
    # index start right at the cursor instead of scanning every newer row.
    return queryset.filter(
        Q(received_at__lte=cursor.received_at),
        Q(received_at__lt=cursor.received_at) | Q(id__lt=cursor.id),
    )


def conversion_list(
    *, partner: Partner, filters: ConversionFilters, limit: int, after: Cursor | None = None
) -> ConversionPage:
    """One page of at most `limit` conversions, newest first, continuing after `after`.

    Rows are plain dicts of CONVERSION_ATTNAMES plus `outcome`: building model
    instances cost more than the query on a 1,000-row page.
    """
    queryset = _after(conversion_queryset(partner=partner, filters=filters), after)
    rows = list(queryset.values(*CONVERSION_ATTNAMES)[: limit + 1])
    for row in rows:
        row["outcome"] = row_kind(is_duplicate=row["is_duplicate"], processing_error=row["processing_error"])
    if len(rows) <= limit:
        return ConversionPage(rows=rows, next_cursor=None)
    rows = rows[:limit]
    last = rows[-1]
    return ConversionPage(rows=rows, next_cursor=Cursor(received_at=last["received_at"], id=last["id"]))


def conversion_count(*, partner: Partner, since: datetime | None = None) -> int:
    """How many rows the partner's database holds, of every kind (received since `since`)."""
    rows = PartnerConversion.objects.using(partner.database_alias).all()
    return (rows.filter(received_at__gte=since) if since else rows).count()


def conversion_export_rows(
    *,
    queryset: QuerySet[PartnerConversion],
    after: Cursor | None = None,
    limit: int | None = None,
    batch_size: int = 5000,
) -> Iterator[tuple[Any, ...]]:
    """Every conversion of `queryset` (one partner's) as a tuple of CONVERSION_ATTNAMES, newest first.

    Datetimes come as ISO 8601 text in UTC (`2025-01-15T13:45:10.5+00:00`), formatted
    by the database: loading them as Python datetimes costs more than all the rest of
    an export. Fetched in keyset batches, so memory stays flat however many rows match
    and no database cursor stays open while the client reads slowly.
    """
    # Keyset batches continue on (received_at, id), whatever order the caller's queryset had.
    queryset = queryset.order_by("-received_at", "-id")
    as_text = {name: Cast(name, TextField()) for name in DATETIME_ATTNAMES}
    columns = [f"{name}{TEXT_SUFFIX}" if name in as_text else name for name in CONVERSION_ATTNAMES]
    queryset = queryset.annotate(**{f"{name}{TEXT_SUFFIX}": expression for name, expression in as_text.items()})
    datetime_indexes = [CONVERSION_ATTNAMES.index(name) for name in DATETIME_ATTNAMES]
    received_at_index = CONVERSION_ATTNAMES.index("received_at")
    id_index = CONVERSION_ATTNAMES.index("id")
    remaining = limit
    while remaining is None or remaining > 0:
        size = batch_size if remaining is None else min(batch_size, remaining)
        batch = _after(queryset, after).values_list(*columns)[:size]
        count = 0
        row: list[Any] = []
        for values in batch:
            row = list(values)
            for index in datetime_indexes:
                row[index] = _iso_utc(row[index])
            count += 1
            yield tuple(row)
        if count < size:
            return
        if remaining is not None:
            remaining -= count
        after = Cursor(received_at=datetime.fromisoformat(row[received_at_index]), id=row[id_index])


def _iso_utc(text: str | None) -> str | None:
    """PostgreSQL's `2025-01-15 13:45:10.5+00` or SQLite's naive UTC text -> ISO 8601 with offset."""
    if text is None:
        return None
    text = text.replace(" ", "T", 1)
    if text.endswith("+00"):
        return text + ":00"
    return text if text.endswith("+00:00") else text + "+00:00"


STATUS_ORDER = {status: index for index, status in enumerate(STATUSES)}


def _in_range(*, partner: Partner, time_range: TimeRange) -> QuerySet[PartnerConversion]:
    return PartnerConversion.objects.using(partner.database_alias).filter(time_range.q(), partner_id=partner.pk)


def conversion_day_groups(*, partner: Partner, time_range: TimeRange) -> QuerySet[PartnerConversion]:
    """The accepted rows grouped by UTC day, offer, duplicate flag and status, with counts and sums.

    The statistics of migration 0008 are on these very expressions: they tell PostgreSQL's
    planner how few groups there are, so it aggregates in parallel and in memory.
    """
    return (
        _in_range(partner=partner, time_range=time_range)
        .filter(processing_error__isnull=True)
        .annotate(_day=TruncDate(time_range.time_field, tzinfo=UTC))
        .values("_day", "offer_id", "is_duplicate", "status")
        .annotate(count=Count("*"), sale=Sum("usd_sale_amount"), earning=Sum("usd_earning"))
        .order_by()
    )


def conversion_stats(
    *, partner: Partner, time_range: TimeRange, top: int = 10, statuses: bool = True
) -> ConversionStats:
    """Counts by outcome, original amounts, a per-day (UTC) series and the top offers; with
    `statuses`, the days split by status and the totals by status (by_status).

    Computed in the partner's database. On received time (the default) the accepted
    rows are read from the covering `stats_accepted` index alone (no table access),
    which keeps 30 days of a million-row table well under a second; rejected rows
    have their own small index. Offers are keyed by offer_id (named by their latest
    offer_name), or by offer_name for rows without an offer_id.
    """
    in_range = _in_range(partner=partner, time_range=time_range)
    day = TruncDate(time_range.time_field, tzinfo=UTC)
    accepted = conversion_day_groups(partner=partner, time_range=time_range)
    rejected = (
        in_range.filter(processing_error__isnull=False)
        .annotate(_day=day)
        .values("_day")
        .annotate(count=Count("*"))
        .order_by()
    )
    unnamed_offers = (
        in_range.filter(processing_error__isnull=True, offer_id__isnull=True, offer_name__isnull=False)
        .values("offer_name", "is_duplicate")
        .annotate(count=Count("*"), sale=Sum("usd_sale_amount"), earning=Sum("usd_earning"))
        .order_by()
    )
    totals, by_day, by_status, by_offer = _stats_groups_add(accepted=accepted, rejected=rejected, statuses=statuses)
    for group in unnamed_offers:
        amounts = {
            "outcome": RowKind.DUPLICATE if group["is_duplicate"] else RowKind.ORIGINAL,
            "count": group["count"],
            "sale": group["sale"],
            "earning": group["earning"],
        }
        key = ("offer_name", group["offer_name"])
        by_offer.setdefault(key, OfferTotals(offer_name=group["offer_name"])).add(**amounts)
    offers = sorted(
        (offer for offer in by_offer.values() if offer.originals),
        key=lambda offer: (-offer.originals, -offer.usd_sale_amount, offer.offer_id or "", offer.offer_name or ""),
    )[:top]
    names = _offer_names(partner=partner, time_range=time_range, offer_ids=[o.offer_id for o in offers if o.offer_id])
    for offer in offers:
        if offer.offer_id is not None:
            offer.offer_name = names.get(offer.offer_id)
    return _stats_result(time_range=time_range, totals=totals, by_day=by_day, by_status=by_status, offers=offers)


def _offer_names(*, partner: Partner, time_range: TimeRange, offer_ids: list[str]) -> dict[str, str | None]:
    """offer_id -> its latest offer_name in the range, for every id in one statement: one
    subquery per id, each reading the (offer_id, received_at) index from its newest entry."""
    if not offer_ids:
        return {}
    if time_range.time_field not in TIME_FIELDS:
        raise ValueError(f"not a time field: {time_range.time_field!r}")
    table = connections[partner.database_alias].ops.quote_name(PartnerConversion._meta.db_table)
    column = connections[partner.database_alias].ops.quote_name(time_range.time_field)
    conditions, bounds = ["partner_id = %s", "offer_id = ids.offer_id", "offer_name IS NOT NULL"], [partner.pk]
    if time_range.start is not None:
        conditions.append(f"{column} >= %s")
        bounds.append(time_range.start)
    if time_range.end is not None:
        conditions.append(f"{column} < %s")
        bounds.append(time_range.end)
    ids = " UNION ALL ".join(["SELECT %s AS offer_id"] * len(offer_ids))
    statement = (
        f"SELECT ids.offer_id, (SELECT offer_name FROM {table} WHERE {' AND '.join(conditions)} "  # noqa: S608
        f"ORDER BY received_at DESC, id DESC LIMIT 1) FROM ({ids}) AS ids"
    )
    with connections[partner.database_alias].cursor() as cursor:
        cursor.execute(statement, [*bounds, *offer_ids])
        return dict(cursor.fetchall())


def conversion_totals(*, partner: Partner, time_range: TimeRange) -> Totals:
    """The totals of conversion_stats alone (no days, offers or statuses): the dashboard's
    previous period, read as cheaply as the range allows."""
    in_range = _in_range(partner=partner, time_range=time_range)
    accepted = (
        in_range.filter(processing_error__isnull=True)
        .values("is_duplicate", "status")
        .annotate(count=Count("*"), sale=Sum("usd_sale_amount"), earning=Sum("usd_earning"))
        .order_by()
    )
    invalid = in_range.filter(processing_error__isnull=False).count()
    totals, _, _, _ = _stats_groups_add(
        accepted=({**group, "_day": None} for group in accepted),
        rejected=[{"_day": None, "count": invalid}] if invalid else [],
    )
    return totals


def conversion_stats_from_groups(
    *,
    time_range: TimeRange,
    accepted: Iterable[dict[str, Any]],
    rejected: Iterable[dict[str, Any]],
    statuses: bool = True,
) -> ConversionStats:
    """conversion_stats(top=0) of one partner from its grouped rows, read elsewhere (e.g. many
    partners in one statement): `accepted` as conversion_day_groups' (offer_id may be left
    out), `rejected` as rejected rows grouped by `_day` with their `count`. Without
    `statuses` (the overview's, which shows neither), the days are not split by status and
    by_status is empty: a thousand partners' days fold in about a quarter of the objects."""
    totals, by_day, by_status, _ = _stats_groups_add(accepted=accepted, rejected=rejected, statuses=statuses)
    return _stats_result(time_range=time_range, totals=totals, by_day=by_day, by_status=by_status, offers=[])


def _stats_groups_add(
    *, accepted: Iterable[dict[str, Any]], rejected: Iterable[dict[str, Any]], statuses: bool = True
) -> tuple[Totals, dict[date, DayTotals], dict[str | None, StatusTotals], dict[tuple[str, str], OfferTotals]]:
    """Totals, per-day, per-status (unless not `statuses`) and per-offer (by offer_id) sums
    of grouped rows.

    Each group's amounts are made cents once, and each sum it adds to found or made once:
    the overview folds tens of thousands of groups.
    """
    totals = Totals()
    by_day: dict[date, DayTotals] = {}
    by_offer: dict[tuple[str, str], OfferTotals] = {}
    by_status: dict[str | None, StatusTotals] = {}
    for group in accepted:
        day, status, count = group["_day"], group["status"], group["count"]
        day_totals = by_day.get(day)
        if day_totals is None:
            day_totals = by_day[day] = DayTotals(day=day)
        sums = [totals, day_totals]
        if statuses:
            day_status = day_totals.statuses.get(status)
            if day_status is None:
                day_status = day_totals.statuses[status] = Totals()
            status_totals = by_status.get(status)
            if status_totals is None:
                status_totals = by_status[status] = StatusTotals(status=status)
            sums += [day_status, status_totals]
        offer_id = group.get("offer_id")
        if offer_id is not None:
            offer = by_offer.get(("offer_id", offer_id))
            if offer is None:
                offer = by_offer[("offer_id", offer_id)] = OfferTotals(offer_id=offer_id)
            sums.append(offer)
        if group["is_duplicate"]:
            for totals_of in sums:
                totals_of.add(outcome=RowKind.DUPLICATE, count=count, sale=None, earning=None)
        else:
            sale, earning, status_of = cents(group["sale"]), cents(group["earning"]), status_class(status)
            for totals_of in sums:
                totals_of.add_originals(count=count, sale=sale, earning=earning, status_of=status_of)
    for group in rejected:
        amounts = {"outcome": RowKind.INVALID, "count": group["count"], "sale": None, "earning": None}
        totals.add(**amounts)
        by_day.setdefault(group["_day"], DayTotals(day=group["_day"])).add(**amounts)
    return totals, by_day, by_status, by_offer


def _stats_result(
    *,
    time_range: TimeRange,
    totals: Totals,
    by_day: dict[date, DayTotals],
    by_status: dict[str | None, StatusTotals],
    offers: list[OfferTotals],
) -> ConversionStats:
    statuses = sorted(by_status.values(), key=lambda totals: STATUS_ORDER.get(totals.status, len(STATUS_ORDER)))
    return ConversionStats(
        time_range=time_range,
        totals=totals,
        days=_every_day(time_range, by_day),
        top_offers=offers,
        by_status=statuses,
    )


def _every_day(time_range: TimeRange, by_day: dict[date, DayTotals]) -> list[DayTotals]:
    if time_range.start is None or time_range.end is None:
        return [by_day[day] for day in sorted(by_day)]
    first = time_range.start.astimezone(UTC).date()
    last = (time_range.end.astimezone(UTC) - timedelta(microseconds=1)).date()
    days = [first + timedelta(days=n) for n in range((last - first).days + 1)]
    return [by_day.get(day) or DayTotals(day=day) for day in days]


SUB_ID_PREFIX_LENGTH = 4


def conversion_sub_id_prefixes(
    *, partner: Partner, time_range: TimeRange, length: int = SUB_ID_PREFIX_LENGTH, top: int = 10
) -> list[PrefixTotals]:
    """The top `sub_id` prefixes (their first `length` characters) by originals, then sales.

    A publisher is recognised by the start of the sub_id the agency put in its links
    (RAMPUP..., OPPO..., MKK...). Accepted postbacks only, as the top offers; on received
    time they are read from the covering `stats_sub_id` index alone.
    """
    in_range = PartnerConversion.objects.using(partner.database_alias).filter(
        time_range.q(), partner_id=partner.pk, processing_error__isnull=True
    )
    groups = (
        in_range.annotate(_prefix=Left("sub_id", length))
        .values("_prefix", "is_duplicate")
        .annotate(count=Count("*"), sale=Sum("usd_sale_amount"), earning=Sum("usd_earning"))
        .order_by()
    )
    by_prefix: dict[str | None, PrefixTotals] = {}
    for group in groups:
        outcome = RowKind.DUPLICATE if group["is_duplicate"] else RowKind.ORIGINAL
        by_prefix.setdefault(group["_prefix"], PrefixTotals(prefix=group["_prefix"])).add(
            outcome=outcome, count=group["count"], sale=group["sale"], earning=group["earning"]
        )
    return sorted(
        (totals for totals in by_prefix.values() if totals.originals),
        key=lambda totals: (-totals.originals, -totals.usd_sale_amount, totals.prefix or ""),
    )[:top]


@dataclass(frozen=True)
class PartnerStats:
    """One partner's stats for the overview, or why its database could not be read."""

    partner: Partner
    stats: ConversionStats | None
    unavailable: str | None = None
