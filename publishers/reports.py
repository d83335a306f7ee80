"""Publisher reports: a publisher's conversions over a date range with its payout, as CSV and XLSX;
and the same figures for a partner's dashboard (its breakdown by publisher).

The payout of each row is the publisher's payout rule (or its offer's override) applied
exactly as its postbacks are (selectors.PublisherRoute.payout); the totals are the sums
of the rows. Rejected conversions are listed, and left out of the sale and payout totals.
Approved, pending and rejected are docs/numbers.md's classes (conversions.selectors.
status_class), as on the dashboards and in the /stats API.
"""

import csv
import datetime
import io
import re
from dataclasses import dataclass, field
from decimal import Decimal

from django.conf import settings
from django.core.mail import EmailMessage
from django.db import connections
from django.db.models import Case, Count, DecimalField, F, Q, Sum, Value, When
from django.db.models.functions import Round
from django.utils import timezone
from openpyxl import Workbook
from openpyxl.cell import WriteOnlyCell
from openpyxl.styles import Font

from conversions.dashboard import PublisherTotals, dashboard_publishers_register
from conversions.exports import csv_text_cell, xlsx_text_cell
from conversions.models import ORIGINAL, PartnerConversion
from conversions.selectors import (
    APPROVED_STATUSES,
    REJECTED_STATUSES,
    STATUS_CLASSES,
    TimeRange,
    status_class,
)
from infra.databases import PartnerDatabaseUnavailable, partner_database
from partners.models import Partner
from publishers.models import FIXED, PERCENT_EARNING, PERCENT_SALE, Publisher
from publishers.selectors import PublisherRoute, publisher_matching_conversions, publisher_partners, publisher_route

COLUMNS = (
    "partner",
    "conversion_id",
    "conversion_datetime",
    "offer_id",
    "offer_name",
    "sub_id",
    "media_id",
    "click_id",
    "status",
    "usd_sale_amount",
    "usd_earning",
    "payout",
)
XLSX_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


@dataclass
class PublisherReport:
    publisher: Publisher
    start: datetime.date
    end: datetime.date  # inclusive
    rows: list[list] = field(default_factory=list)
    total_sale: Decimal = Decimal("0.00")  # approved + pending
    total_payout: Decimal = Decimal("0.00")  # approved + pending
    # Sales by status class: approved (approved, paid), pending (pending, none), network_rejected.
    sales: dict[str, Decimal] = field(default_factory=lambda: dict.fromkeys(STATUS_CLASSES, Decimal("0.00")))
    unavailable: list[str] = field(default_factory=list)  # partners whose database could not be read

    @property
    def name(self) -> str:
        return f"{self.publisher.code}-{self.start.isoformat()}-{self.end.isoformat()}"


def period_range(period: str, *, today: datetime.date | None = None) -> tuple[datetime.date, datetime.date]:
    """(first day, last day) of `last-week` (Monday to Sunday), `last-month` or `yesterday`."""
    today = today or timezone.localdate()
    if period == "last-week":
        monday = today - datetime.timedelta(days=today.weekday() + 7)
        return monday, monday + datetime.timedelta(days=6)
    if period == "last-month":
        last = today.replace(day=1) - datetime.timedelta(days=1)
        return last.replace(day=1), last
    if period == "yesterday":
        day = today - datetime.timedelta(days=1)
        return day, day
    raise ValueError(f"unknown period {period!r}: last-week, last-month or yesterday")


def publisher_report(*, publisher: Publisher, start: datetime.date, end: datetime.date) -> PublisherReport:
    """The publisher's conversions that happened from `start` to `end` (inclusive; by
    conversion time, else by received time) over its partners, with its payout."""
    if end < start:
        raise ValueError("the end date is before the start date")
    report = PublisherReport(publisher=publisher, start=start, end=end)
    route = publisher_route(publisher)
    since = timezone.make_aware(datetime.datetime.combine(start, datetime.time.min))
    until = timezone.make_aware(datetime.datetime.combine(end + datetime.timedelta(days=1), datetime.time.min))
    in_range = Q(conversion_datetime__gte=since, conversion_datetime__lt=until) | Q(
        conversion_datetime__isnull=True, received_at__gte=since, received_at__lt=until
    )
    for partner in publisher_partners(publisher):
        try:
            with partner_database(partner) as alias:
                conversions = (
                    PartnerConversion.objects.using(alias).filter(in_range).order_by("conversion_datetime", "id")
                )
                for conversion in publisher_matching_conversions(route=route, partner=partner, conversions=conversions):
                    values = conversion.canonical_values()
                    payout = route.payout(values)
                    report.rows.append(
                        [
                            partner.partner_code,
                            conversion.conversion_id,
                            conversion.conversion_datetime or conversion.received_at,
                            conversion.offer_id,
                            conversion.offer_name,
                            conversion.sub_id,
                            conversion.media_id,
                            conversion.click_id,
                            conversion.status,
                            conversion.usd_sale_amount,
                            conversion.usd_earning,
                            payout,
                        ]
                    )
                    status_of = status_class(conversion.status)
                    report.sales[status_of] += conversion.usd_sale_amount or 0
                    if status_of != "network_rejected":
                        report.total_sale += conversion.usd_sale_amount or 0
                        report.total_payout += payout or 0
        except PartnerDatabaseUnavailable:
            report.unavailable.append(partner.partner_code)  # the report says which partner is missing
    return report


def _cell(value):
    if value is None:
        return ""
    if isinstance(value, datetime.datetime):
        return value.astimezone(datetime.UTC).isoformat()
    if isinstance(value, Decimal):
        return f"{value:f}"
    return csv_text_cell(str(value))


def report_csv(report: PublisherReport) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(COLUMNS)
    for row in report.rows:
        writer.writerow([_cell(value) for value in row])
    writer.writerow(["total (not rejected)", *[""] * 8, f"{report.total_sale:f}", "", f"{report.total_payout:f}"])
    return buffer.getvalue().encode("utf-8")


def report_xlsx(report: PublisherReport) -> bytes:
    """The report as typed cells: text as text (no CSV formula guard: a string cell is never
    a formula), datetimes in UTC, amounts as numbers; a bold header and total."""
    workbook = Workbook(write_only=True)
    sheet = workbook.create_sheet("conversions")

    def bold(values: list) -> list:
        cells = []
        for value in values:
            cell = WriteOnlyCell(sheet, value=value)
            cell.font = Font(bold=True)
            cells.append(cell)
        return cells

    sheet.append(bold(list(COLUMNS)))
    for row in report.rows:
        sheet.append(
            [
                value.astimezone(datetime.UTC).replace(tzinfo=None)
                if isinstance(value, datetime.datetime)
                else xlsx_text_cell(sheet, value)
                if isinstance(value, str)
                else value
                for value in row
            ]
        )
    sheet.append(bold(["total (not rejected)", *[None] * 8, report.total_sale, None, report.total_payout]))
    output = io.BytesIO()
    workbook.save(output)
    return output.getvalue()


def publisher_report_send(*, report: PublisherReport) -> int:
    """Email the report to the publisher's recipients, CSV and XLSX attached; 1 when sent."""
    publisher = report.publisher
    period = f"{report.start.isoformat()} to {report.end.isoformat()}"
    body = (
        f"Conversions of {publisher.name} from {period} (UTC): {len(report.rows)}.\n"
        f"Sale amount (not rejected): USD {report.total_sale:f}\n"
        f"  approved: USD {report.sales['approved']:f}, pending: USD {report.sales['pending']:f}"
        f" (rejected, not counted: USD {report.sales['network_rejected']:f})\n"
        f"Payout (not rejected): USD {report.total_payout:f}\n"
    )
    if report.unavailable:
        body += f"\nNot included (database unavailable): {', '.join(report.unavailable)}\n"
    message = EmailMessage(
        subject=f"Conversion report {publisher.name}: {period}",
        body=body,
        from_email=settings.DEFAULT_FROM_EMAIL,
        to=publisher.recipients,
    )
    message.attach(f"{report.name}.csv", report_csv(report), "text/csv")
    message.attach(f"{report.name}.xlsx", report_xlsx(report), XLSX_TYPE)
    return message.send()


# --- a partner's dashboard: its conversions by publisher ---------------------------------

AMOUNT = DecimalField(max_digits=20, decimal_places=2)


def _route_q(route: PublisherRoute, *, vendor: str) -> Q | None:
    """The rows publisher_matching_conversions yields, as SQL: the prefixes (when set) and the
    regular expression (when set) searched from the start; None when nothing can match.

    Prefixes compare case-sensitively, as the ingest does: on SQLite, whose LIKE ignores case,
    as a regular expression (Django runs SQLite's with Python's `re`, the ingest's own)."""
    if not route.prefixes and route.regex is None:
        return None
    field_name = route.match_field
    match = Q(**{f"{field_name}__isnull": False}) & ~Q(**{field_name: ""})
    if route.prefixes:
        prefixes = Q()
        for prefix in route.prefixes:
            if vendor == "sqlite":
                prefixes |= Q(**{f"{field_name}__regex": f"^{re.escape(prefix)}"})
            else:
                prefixes |= Q(**{f"{field_name}__startswith": prefix})
        match &= prefixes
    if route.regex is not None:
        match &= Q(**{f"{field_name}__regex": f"^(?:{route.regex.pattern})"})
    return match


def _payout_sql(kind: str, value: Decimal):
    """payouts.payout_compute as SQL: half-up to cents (ROUND on numeric), NULL without a base."""
    if kind == FIXED:
        return Value(Decimal(value).quantize(Decimal("0.01")), output_field=AMOUNT)
    base = {PERCENT_SALE: "usd_sale_amount", PERCENT_EARNING: "usd_earning"}[kind]
    return Round(F(base) * Value(Decimal(value), output_field=AMOUNT) / Value(100), 2, output_field=AMOUNT)


def _route_payout_sql(route: PublisherRoute):
    """The payout rule of each row: an override by offer_id, else by exact offer_name, else the default."""
    whens = [When(offer_id=key, then=_payout_sql(*rule)) for key, rule in route.payout_overrides.items() if key]
    whens += [When(offer_name=key, then=_payout_sql(*rule)) for key, rule in route.payout_overrides.items() if key]
    default = _payout_sql(*route.payout_default)
    return Case(*whens, default=default, output_field=AMOUNT) if whens else default


def _publishers_of(partner: Partner) -> list[Publisher]:
    """The publishers whose reports may include this partner's conversions (publisher_partners)."""
    if not partner.is_active:
        return []
    publishers = Publisher.objects.prefetch_related("partners", "offer_payouts").order_by("code")
    return [
        publisher
        for publisher in publishers
        if (partner.pk in {chosen.pk for chosen in publisher.partners.all()}) or not publisher.partners.all()
    ]


def publishers_breakdown(*, partner: Partner, time_range: TimeRange) -> list[PublisherTotals]:
    """Each publisher's share of the partner's originals in the range, in one statement: what
    its report counts (the same rows, the same payouts), by status class; publishers that
    matched nothing are left out. Call inside partner_database()."""
    vendor = connections[partner.database_alias].vendor
    routes = [(publisher, publisher_route(publisher)) for publisher in _publishers_of(partner)]
    routes = [
        (publisher, route, match)
        for publisher, route in routes
        if (match := _route_q(route, vendor=vendor)) is not None
    ]
    if not routes:
        return []
    classes = {
        "approved": Q(status__in=APPROVED_STATUSES),
        # Any other status, or none, is pending (conversions.selectors.status_class).
        "pending": ~Q(status__in=[*APPROVED_STATUSES, *REJECTED_STATUSES]) | Q(status__isnull=True),
        "network_rejected": Q(status__in=REJECTED_STATUSES),
    }
    aggregates = {}
    for n, (_publisher, route, match) in enumerate(routes):
        for name, of_class in classes.items():
            where = match & of_class
            aggregates[f"p{n}_{name}_count"] = Count("id", filter=where)
            aggregates[f"p{n}_{name}_sale"] = Sum("usd_sale_amount", filter=where)
            aggregates[f"p{n}_{name}_earning"] = Sum("usd_earning", filter=where)
        open_rows = match & (classes["approved"] | classes["pending"])
        aggregates[f"p{n}_payout"] = Sum(_route_payout_sql(route), filter=open_rows)
    found = (
        PartnerConversion.objects.using(partner.database_alias)
        .filter(time_range.q(), ORIGINAL, partner_id=partner.pk)
        .aggregate(**aggregates)
    )
    breakdown = []
    for n, (publisher, _route, _match) in enumerate(routes):
        totals = PublisherTotals(code=publisher.code, name=publisher.name)
        for name in classes:
            revenue = getattr(totals, name)
            revenue.originals = found[f"p{n}_{name}_count"]
            revenue.usd_sale_amount = _cents(found[f"p{n}_{name}_sale"])
            revenue.usd_earning = _cents(found[f"p{n}_{name}_earning"])
        totals.payout = _cents(found[f"p{n}_payout"])
        if totals.originals:
            breakdown.append(totals)
    return breakdown


def _cents(value) -> Decimal:
    return Decimal(value or 0).quantize(Decimal("0.01"))


dashboard_publishers_register(publishers_breakdown)
