"""What the admin's dashboards draw: the stats selectors' numbers shaped as charts and tables.

Every number comes from conversions/selectors.py (the `/stats` API's selectors) under the
definitions of docs/numbers.md; this module only arranges them into Chart.js datasets
(conversions/static/conversions/dashboard.js draws them) and into the tables shown beside
the charts, which the page renders and exports as CSV alike (one Table, two formats).

Each dataset names what it counts (`kind`: an outcome or a status), so a row's kind and
the network's status never share a colour: invalid postbacks amber, rejected sales red.
"""

import csv
import io
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

from conversions.exports import csv_text_cell
from conversions.selectors import (
    ConversionStats,
    DayTotals,
    PartnerStats,
    PrefixTotals,
    Revenue,
    TimeRange,
    Totals,
)
from partners.lifecycle import STATUSES
from partners.models import Partner

NO_STATUS = "no status"
CURRENCY = "USD"  # every amount the dashboards add is a usd_* column
LABEL_CHARACTERS = 32  # a chart's category label past this is cut (the table beside it has it whole)
OTHERS = "others"


# --- numbers as people read them ----------------------------------------------------------


def money(value: Decimal | None) -> str:
    """USD 117,398,939.53"""
    return "-" if value is None else f"{CURRENCY} {value:,.2f}"


def count(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def percent(value: Decimal | None) -> str:
    """A rate (0.2500) as 25.00 %."""
    return "-" if value is None else f"{value * 100:.2f} %"


def change(current: Decimal | int, previous: Decimal | int) -> str:
    """The change from the previous period: +12.5 %, -3.0 %, or `new` when it had none."""
    if not previous:
        return "new" if current else "no change"
    delta = (Decimal(current) - Decimal(previous)) / abs(Decimal(previous)) * 100
    return f"{delta:+.1f} %"


def _number(value: Decimal | int) -> float | int:
    return float(value) if isinstance(value, Decimal) else value


def _label(text: str) -> str:
    return text if len(text) <= LABEL_CHARACTERS else text[: LABEL_CHARACTERS - 1] + "…"


# --- tables: shown on the page and exported as CSV ---------------------------------------

FORMATS: dict[str, Callable[[Any], str]] = {
    "money": money,
    "count": count,
    "rate": percent,
    "day": lambda value: value.isoformat() if isinstance(value, date) else str(value or "-"),
    "text": lambda value: "-" if value is None else str(value),
    "note": str,  # a sentence across the row (why a partner has no figures), never cut
}


@dataclass(frozen=True)
class Column:
    label: str
    kind: str  # a key of FORMATS

    @property
    def numeric(self) -> bool:
        return self.kind in ("money", "count", "rate")


@dataclass(frozen=True)
class Cell:
    value: Any
    kind: str
    link: str | None = None

    @property
    def text(self) -> str:
        return FORMATS[self.kind](self.value)


@dataclass
class Table:
    id: str
    columns: list[Column]
    rows: list[list[Cell]] = field(default_factory=list)
    footer: list[Cell] | None = None  # the totals row
    empty: str = "Nothing in this range."

    def add(self, values: Iterable[Any], links: dict[int, str | None] | None = None) -> list[Cell]:
        links = links or {}
        pairs = enumerate(zip(self.columns, values, strict=True))
        row = [Cell(value, column.kind, links.get(i)) for i, (column, value) in pairs]
        self.rows.append(row)
        return row

    def total(self, values: Iterable[Any]) -> None:
        self.footer = [Cell(value, column.kind) for column, value in zip(self.columns, values, strict=True)]

    def csv(self) -> bytes:
        """The table as CSV: plain numbers (no separators, no currency: the header says USD)."""
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow([f"{column.label} ({CURRENCY})" if column.kind == "money" else column.label
                         for column in self.columns])  # fmt: skip
        for row in [*self.rows, *([self.footer] if self.footer else [])]:
            writer.writerow([_csv_value(cell) for cell in row])
        return buffer.getvalue().encode("utf-8")


def _csv_value(cell: Cell) -> str:
    if cell.value is None:
        return ""
    if isinstance(cell.value, Decimal):
        return f"{cell.value:f}"
    if isinstance(cell.value, date):
        return cell.value.isoformat()
    return csv_text_cell(str(cell.value)) if isinstance(cell.value, str) else str(cell.value)


# --- links to the conversions list -------------------------------------------------------


@dataclass(frozen=True)
class ConversionsLink:
    """The conversions changelist of one partner, filtered (conversions/admin/filters.py's params)."""

    base: str  # the changelist's URL
    partner_code: str
    time_range: TimeRange

    def days(self, first: date, last: date) -> dict[str, str]:
        field_name = self.time_range.time_field
        return {f"{field_name}__range_from": first.isoformat(), f"{field_name}__range_to": last.isoformat()}

    def range_days(self) -> tuple[date, date]:
        start, end = self.time_range.start, self.time_range.end
        return start.date(), (end - timedelta(microseconds=1)).date()

    def url(self, *, first: date | None = None, last: date | None = None, **filters: str) -> str:
        if first is None or last is None:
            first, last = self.range_days()
        # Originals only, as every amount here: not a duplicate, valid.
        query = {"partner": self.partner_code, **self.days(first, last), "is_duplicate__exact": "0", "has_error": "no"}
        return f"{self.base}?{urlencode({**query, **filters})}"


# --- one partner's dashboard -------------------------------------------------------------


def _chart(chart_id: str, title: str, labels: list[str], datasets: list[dict[str, Any]], **options: Any) -> dict:
    return {"id": chart_id, "title": title, "labels": labels, "datasets": datasets, **options}


def _statuses(stats: ConversionStats) -> list[str | None]:
    present = {status for day in stats.days for status in day.statuses}
    ordered: list[str | None] = [status for status in STATUSES if status in present]
    ordered += sorted(status for status in present if status is not None and status not in STATUSES)
    return ordered + ([None] if None in present else [])


def _status_kind(status: str | None) -> str:
    return f"status:{status}" if status in STATUSES else "status:other"


def _status_link(status: str | None) -> dict[str, str]:
    # The list's status filter has one value at a time; "no status" has no filter of its own.
    return {"status": status} if status in STATUSES else {}


def _day_links(stats: ConversionStats, link: ConversionsLink | None) -> list[dict[str, str]] | None:
    if link is None:
        return None
    return [link.days(day.day, day.day) for day in stats.days]


def dashboard_partner_charts(
    *, stats: ConversionStats, prefixes: list[PrefixTotals], link: ConversionsLink | None = None
) -> list[dict[str, Any]]:
    """The charts of one partner's dashboard. With `link`, a click on a bar opens the
    conversions of that day (and status, or offer) in the conversions list."""
    days = [day.day.isoformat() for day in stats.days]
    statuses = _statuses(stats)
    links = {"base": link.url(), "labels": _day_links(stats, link)} if link else None
    outcomes = _chart(
        "chart-outcomes",
        "Postbacks per day",
        days,
        [
            {"label": "originals", "kind": "outcome:original", "data": [day.originals for day in stats.days]},
            {"label": "duplicates", "kind": "outcome:duplicate", "data": [day.duplicates for day in stats.days]},
            {"label": "invalid", "kind": "outcome:invalid", "data": [day.rejected for day in stats.days]},
        ],
        stacked=True,
    )
    by_status = _chart(
        "chart-statuses",
        "Originals per day, by status",
        days,
        [
            {
                "label": status or NO_STATUS,
                "kind": _status_kind(status),
                "data": [day.statuses[status].originals if status in day.statuses else 0 for day in stats.days],
                "link": _status_link(status),
            }
            for status in statuses
        ],
        stacked=True,
        links=links,
    )
    revenue = _chart(
        "chart-revenue",
        f"Sales ({CURRENCY}) per day, by status, and earnings",
        days,
        [
            {
                "label": f"sales: {status or NO_STATUS}",
                "kind": _status_kind(status),
                "data": [
                    _number(day.statuses[status].usd_sale_amount) if status in day.statuses else 0 for day in stats.days
                ],
                "stack": "sales",
                "link": _status_link(status),
            }
            for status in statuses
        ]
        + [
            {
                # Earnings are about a tenth of sales: on their own axis, drawn over the bars.
                "label": "earnings (approved + pending)",
                "kind": "earnings",
                "type": "line",
                "yAxisID": "earnings",
                "order": 0,
                "data": [_number(day.open_usd_earning) for day in stats.days],
            }
        ],
        stacked=True,
        money=True,
        links=links,
    )
    offers = _chart(
        "chart-offers",
        "Top offers (originals)",
        [_label(offer.offer_name or offer.offer_id or "-") for offer in stats.top_offers],
        [{"label": "originals", "kind": "outcome:original", "data": [offer.originals for offer in stats.top_offers]}],
        horizontal=True,
        links={
            "base": link.url(),
            "labels": [{"offer_id": offer.offer_id} if offer.offer_id else {} for offer in stats.top_offers],
        }
        if link
        else None,
    )
    top_prefixes = _chart(
        "chart-prefixes",
        "Top sub_id prefixes (originals)",
        [_label(prefix.prefix) if prefix.prefix is not None else "(no sub_id)" for prefix in prefixes],
        [{"label": "originals", "kind": "outcome:original", "data": [prefix.originals for prefix in prefixes]}],
        horizontal=True,
    )
    return [outcomes, by_status, revenue, offers, top_prefixes]


@dataclass(frozen=True)
class Headline:
    key: str
    label: str
    value: Any
    kind: str
    previous: Any = None
    tone: str = ""  # "rejected": shown apart
    help: str = ""

    @property
    def text(self) -> str:
        return FORMATS[self.kind](self.value)

    @property
    def raw(self) -> str:
        return "" if self.value is None else str(self.value)

    @property
    def change(self) -> str | None:
        if self.previous is None or self.value is None or self.kind == "rate":
            return None
        return change(self.value, self.previous)

    @property
    def previous_text(self) -> str:
        return FORMATS[self.kind](self.previous)


def dashboard_headlines(
    *, totals: Totals, previous: Totals | None, payouts: Decimal | None = None, previous_payouts: Decimal | None = None
) -> list[Headline]:
    """The headline cards: approved and pending revenue apart, rejected apart from both, with the
    previous period's figures (and the change) when given. docs/numbers.md defines each."""
    before = previous or Totals()
    has = previous is not None
    cards = [
        Headline("approved_usd_sale_amount", "approved revenue", totals.approved.usd_sale_amount, "money",
                 before.approved.usd_sale_amount if has else None, help="sales of originals approved or paid"),
        Headline("pending_usd_sale_amount", "pending revenue", totals.pending.usd_sale_amount, "money",
                 before.pending.usd_sale_amount if has else None, help="sales of originals pending or without status"),
        Headline("open_usd_earning", "earnings", totals.open_usd_earning, "money",
                 before.open_usd_earning if has else None, help="our earnings on approved + pending originals"),
    ]  # fmt: skip
    if payouts is not None:
        margin = totals.open_usd_earning - payouts
        before_margin = before.open_usd_earning - previous_payouts if previous_payouts is not None else None
        cards += [
            Headline("publisher_payouts", "publishers' payouts", payouts, "money", previous_payouts if has else None,
                     help="what publishers' payout rules give for approved + pending originals"),
            Headline("margin", "margin", margin, "money", before_margin if has else None,
                     help="earnings minus publishers' payouts"),
        ]  # fmt: skip
    cards += [
        Headline("originals", "originals", totals.originals, "count", before.originals if has else None),
        Headline("approval_rate", "approval rate", totals.approval_rate, "rate", before.approval_rate if has else None,
                 help="approved originals / originals"),
        Headline("rejection_rate", "rejection rate", totals.rejection_rate, "rate",
                 before.rejection_rate if has else None, tone="rejected", help="rejected originals / originals"),
        Headline("network_rejected_usd_sale_amount", "rejected revenue", totals.network_rejected.usd_sale_amount,
                 "money", before.network_rejected.usd_sale_amount if has else None, tone="rejected",
                 help="sales the network rejected: not revenue"),
        Headline("duplicates", "duplicates", totals.duplicates, "count", before.duplicates if has else None),
        Headline("invalid", "invalid postbacks", totals.rejected, "count", before.rejected if has else None),
    ]  # fmt: skip
    return cards


DAY_COLUMNS = [
    Column("day", "day"),
    Column("originals", "count"),
    Column("duplicates", "count"),
    Column("invalid", "count"),
    Column("approved", "money"),
    Column("pending", "money"),
    Column("rejected", "money"),
    Column("earnings", "money"),
]


def _day_values(day: Totals, label: Any) -> list[Any]:
    return [
        label,
        day.originals,
        day.duplicates,
        day.rejected,
        day.approved.usd_sale_amount,
        day.pending.usd_sale_amount,
        day.network_rejected.usd_sale_amount,
        day.open_usd_earning,
    ]


def dashboard_days_table(
    *, table_id: str, days: list[DayTotals], totals: Totals, link: ConversionsLink | None = None
) -> Table:
    """One row per day, newest first, with the range's totals."""
    table = Table(table_id, DAY_COLUMNS)
    for day in reversed(days):
        table.add(_day_values(day, day.day), {0: link.url(first=day.day, last=day.day)} if link else None)
    table.total(_day_values(totals, "total"))
    return table


def dashboard_partner_tables(
    *, stats: ConversionStats, prefixes: list[PrefixTotals], link: ConversionsLink | None = None
) -> dict[str, Table]:
    """The tables beside the partner dashboard's charts, by id."""
    days = dashboard_days_table(table_id="table-days", days=stats.days, totals=stats.totals, link=link)
    statuses = Table(
        "table-statuses",
        [Column("status", "text"), Column("originals", "count"), Column("share", "rate"),
         Column("duplicates", "count"), Column("revenue", "money"), Column("earnings", "money")],
        empty="No accepted postbacks in this range.",
    )  # fmt: skip
    for row in stats.by_status:
        share = Decimal(row.originals) / stats.totals.originals if stats.totals.originals else None
        statuses.add(
            [row.status or NO_STATUS, row.originals, share and share.quantize(Decimal("0.0001")), row.duplicates,
             row.usd_sale_amount, row.usd_earning],
            {0: link.url(**_status_link(row.status))} if link and row.status in STATUSES else None,
        )  # fmt: skip
    totals = stats.totals
    statuses.total(["total", totals.originals, None, totals.duplicates, totals.usd_sale_amount, totals.usd_earning])
    offers = Table(
        "table-offers",
        [Column("offer", "text"), Column("originals", "count"), Column("approved", "money"),
         Column("pending", "money"), Column("earnings", "money")],
        empty="No offers in this range.",
    )  # fmt: skip
    for offer in stats.top_offers:
        name = offer.offer_name or offer.offer_id or "-"
        if offer.offer_id and offer.offer_name:
            name = f"{offer.offer_name} ({offer.offer_id})"
        offers.add(
            [name, offer.originals, offer.approved.usd_sale_amount, offer.pending.usd_sale_amount,
             offer.open_usd_earning],
            {0: link.url(offer_id=offer.offer_id)} if link and offer.offer_id else None,
        )  # fmt: skip
    prefix_table = Table(
        "table-prefixes",
        [Column("prefix", "text"), Column("originals", "count"), Column("duplicates", "count"),
         Column("revenue", "money"), Column("earnings", "money")],
        empty="No sub_ids in this range.",
    )  # fmt: skip
    for prefix in prefixes:
        prefix_table.add(
            [prefix.prefix if prefix.prefix is not None else "(no sub_id)", prefix.originals, prefix.duplicates,
             prefix.usd_sale_amount, prefix.usd_earning]
        )  # fmt: skip
    return {table.id: table for table in (days, statuses, offers, prefix_table)}


# --- publishers: registered by the publishers app ----------------------------------------


@dataclass
class PublisherTotals:
    """A publisher's share of one partner's originals in a range (docs/numbers.md)."""

    code: str
    name: str
    approved: Revenue = field(default_factory=Revenue)
    pending: Revenue = field(default_factory=Revenue)
    network_rejected: Revenue = field(default_factory=Revenue)
    payout: Decimal = Decimal("0.00")  # approved + pending originals only

    @property
    def originals(self) -> int:
        return self.approved.originals + self.pending.originals + self.network_rejected.originals

    @property
    def open_usd_earning(self) -> Decimal:
        return self.approved.usd_earning + self.pending.usd_earning

    @property
    def margin(self) -> Decimal:
        return self.open_usd_earning - self.payout


PublisherBreakdown = Callable[..., list[PublisherTotals]]
_publisher_breakdown: list[PublisherBreakdown] = []


def dashboard_publishers_register(breakdown: PublisherBreakdown) -> None:
    """Let another app (publishers) say which publishers a partner's conversions are
    attributed to: `breakdown(partner=, time_range=)` -> [PublisherTotals]. Conversions
    import no publisher code; without one registered the dashboard has no such table."""
    _publisher_breakdown[:] = [breakdown]


def dashboard_publishers(*, partner: Partner, time_range: TimeRange) -> list[PublisherTotals] | None:
    """The registered breakdown (None: none registered). Call inside partner_database()."""
    if not _publisher_breakdown:
        return None
    return _publisher_breakdown[0](partner=partner, time_range=time_range)


def dashboard_publishers_table(publishers: list[PublisherTotals], link: ConversionsLink | None = None) -> Table:
    table = Table(
        "table-publishers",
        [Column("publisher", "text"), Column("originals", "count"), Column("approved", "money"),
         Column("pending", "money"), Column("rejected", "money"), Column("earnings", "money"),
         Column("payouts", "money"), Column("margin", "money")],
        empty="No publisher's conversions in this range.",
    )  # fmt: skip
    for publisher in publishers:
        table.add(
            [f"{publisher.name} ({publisher.code})", publisher.originals, publisher.approved.usd_sale_amount,
             publisher.pending.usd_sale_amount, publisher.network_rejected.usd_sale_amount,
             publisher.open_usd_earning, publisher.payout, publisher.margin]
        )  # fmt: skip
    table.total(
        ["total", sum(p.originals for p in publishers),
         sum((p.approved.usd_sale_amount for p in publishers), Decimal(0)),
         sum((p.pending.usd_sale_amount for p in publishers), Decimal(0)),
         sum((p.network_rejected.usd_sale_amount for p in publishers), Decimal(0)),
         sum((p.open_usd_earning for p in publishers), Decimal(0)), sum((p.payout for p in publishers), Decimal(0)),
         sum((p.margin for p in publishers), Decimal(0))]
    )  # fmt: skip
    return table


# --- the all-partners overview -----------------------------------------------------------

OVERVIEW_SORTS = {
    "approved": ("approved revenue", lambda totals: -totals.approved.usd_sale_amount),
    "open": ("approved + pending revenue", lambda totals: -totals.open_usd_sale_amount),
    "earnings": ("earnings", lambda totals: -totals.open_usd_earning),
    "originals": ("originals", lambda totals: -totals.originals),
    "rejection": ("rejection rate", lambda totals: -(totals.rejection_rate or 0)),
}


def overview_sorted(results: list[PartnerStats], sort: str) -> list[PartnerStats]:
    """Readable partners by `sort` (then by name), those that could not be read last; `name` sorts by name."""
    readable = [result for result in results if result.stats is not None]
    unreadable = [result for result in results if result.stats is None]
    name = lambda result: result.partner.partner_name.lower()  # noqa: E731
    if sort == "name":
        readable.sort(key=name)
    else:
        key = OVERVIEW_SORTS[sort][1]
        readable.sort(key=lambda result: (key(result.stats.totals), name(result)))
    return readable + sorted(unreadable, key=name)


def _sum_days(results: list[PartnerStats]) -> list[DayTotals]:
    """Every partner's days added up, day by day."""
    if not results:
        return []
    days = [DayTotals(day=day.day) for day in results[0].stats.days]
    for result in results:
        for total, day in zip(days, result.stats.days, strict=True):
            _add_totals(total, day)
    return days


def _add_totals(into: Totals, other: Totals) -> None:
    into.originals += other.originals
    into.duplicates += other.duplicates
    into.rejected += other.rejected
    into.usd_sale_amount += other.usd_sale_amount
    into.usd_earning += other.usd_earning
    for name in ("approved", "pending", "network_rejected"):
        mine, theirs = getattr(into, name), getattr(other, name)
        mine.originals += theirs.originals
        mine.usd_sale_amount += theirs.usd_sale_amount
        mine.usd_earning += theirs.usd_earning


def overview_totals(results: list[PartnerStats]) -> Totals:
    totals = Totals()
    for result in results:
        if result.stats is not None:
            _add_totals(totals, result.stats.totals)
    return totals


def dashboard_overview_charts(*, results: list[PartnerStats], top: int = 10, sort: str = "approved") -> list[dict]:
    """The overview's charts: the first `top` partners (in `sort` order) one by one, the rest as
    one `others` series, so a thousand partners draw as `top` + 1 series."""
    ordered = [result for result in overview_sorted(results, sort) if result.stats is not None]
    days = [day.day.isoformat() for day in ordered[0].stats.days] if ordered else []
    shown, rest = ordered[:top], ordered[top:]
    others = _sum_days(rest)

    def series(value: Callable[[DayTotals], Any]) -> list[dict[str, Any]]:
        datasets = [
            {"label": _label(result.partner.partner_name), "data": [_number(value(day)) for day in result.stats.days]}
            for result in shown
        ]
        if rest:
            datasets.append(
                {"label": f"{OTHERS} ({len(rest)})", "kind": "others", "data": [_number(value(d)) for d in others]}
            )
        return datasets

    revenue = _chart(
        "chart-overview-revenue",
        f"Approved revenue ({CURRENCY}) per day, by partner",
        days,
        series(lambda day: day.approved.usd_sale_amount),
        stacked=True,
        money=True,
    )
    originals = _chart(
        "chart-overview-originals", "Originals per day, by partner", days, series(lambda d: d.originals), stacked=True
    )
    return [revenue, originals]


PARTNER_COLUMNS = [
    Column("partner", "text"),
    Column("originals", "count"),
    Column("approved", "money"),
    Column("pending", "money"),
    Column("rejected", "money"),
    Column("earnings", "money"),
    Column("approval rate", "rate"),
    Column("duplicates", "count"),
    Column("invalid", "count"),
]


def _partner_values(label: str, totals: Totals) -> list[Any]:
    return [
        label,
        totals.originals,
        totals.approved.usd_sale_amount,
        totals.pending.usd_sale_amount,
        totals.network_rejected.usd_sale_amount,
        totals.open_usd_earning,
        totals.approval_rate,
        totals.duplicates,
        totals.rejected,
    ]


def dashboard_overview_tables(
    *, results: list[PartnerStats], sort: str, dashboard_url: Callable[[Partner], str]
) -> dict[str, Table]:
    """The overview's tables: every partner (in `sort` order) with a totals row, and every
    partner's days added up (newest first)."""
    partners = Table("table-partners", PARTNER_COLUMNS, empty="No partners.")
    for result in overview_sorted(results, sort):
        if result.stats is None:
            values = [None] * len(PARTNER_COLUMNS)
            row = partners.add(values)
            row[1] = Cell(f"database unavailable ({result.unavailable})", "note")
        else:
            row = partners.add(_partner_values(result.partner.partner_name, result.stats.totals))
        row[0] = Cell(result.partner.partner_name, "text", dashboard_url(result.partner))
    totals = overview_totals(results)
    partners.total(_partner_values("total", totals))
    readable = [result for result in results if result.stats is not None]
    days = dashboard_days_table(table_id="table-overview-days", days=_sum_days(readable), totals=totals)
    return {partners.id: partners, days.id: days}
