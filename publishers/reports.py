"""Publisher reports: a publisher's conversions over a date range with its payout, as CSV and XLSX.

The payout of each row is the publisher's payout rule (or its offer's override) applied
exactly as its postbacks are (selectors.PublisherRoute.payout); the totals are the sums
of the rows. Rejected conversions are listed, and left out of the payout total.
"""

import csv
import datetime
import io
from dataclasses import dataclass, field
from decimal import Decimal

from django.conf import settings
from django.core.mail import EmailMessage
from django.db.models import Q
from django.utils import timezone
from openpyxl import Workbook
from openpyxl.styles import Font

from conversions.exports import csv_text_cell
from conversions.models import PartnerConversion
from infra.databases import PartnerDatabaseUnavailable, partner_database
from partners.lifecycle import REJECTED
from publishers.models import Publisher
from publishers.selectors import publisher_matching_conversions, publisher_partners, publisher_route

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
    total_sale: Decimal = Decimal("0.00")
    total_payout: Decimal = Decimal("0.00")
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
                    if conversion.status != REJECTED:
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
    workbook = Workbook()
    sheet = workbook.active
    sheet.title = "conversions"
    sheet.append(COLUMNS)
    for cell in sheet[1]:
        cell.font = Font(bold=True)
    for row in report.rows:
        sheet.append(
            [
                value.astimezone(datetime.UTC).replace(tzinfo=None)
                if isinstance(value, datetime.datetime)
                else csv_text_cell(value)
                if isinstance(value, str)
                else value
                for value in row
            ]
        )
    sheet.append(["total (not rejected)", *[None] * 8, report.total_sale, None, report.total_payout])
    for cell in sheet[sheet.max_row]:
        cell.font = Font(bold=True)
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
