"""Publisher reports: totals are the payout rules applied to its conversions; one mail per publisher."""

import csv
import datetime
import io
from decimal import ROUND_HALF_UP, Decimal

import pytest
from django.core import mail
from django.core.management import call_command
from django.test import override_settings
from openpyxl import load_workbook

from publishers.models import PublisherOfferPayout
from publishers.reports import period_range, publisher_report, report_csv, report_xlsx
from publishers.services import publisher_save
from tests.publishers.test_forwarding import involve_postback

LOCMEM = override_settings(EMAIL_BACKEND="django.core.mail.backends.locmem.EmailBackend")
SALES = [
    ("R-1", "RPID1", "OF1", "100.00", "pending"),
    ("R-2", "RAMPUP2", "OF9", "33.33", "approved"),
    ("R-3", "RPID3", "OF1", "0.50", "pending"),
    ("R-4", "OPPO4", "OF1", "80.00", "pending"),
    ("R-5", "RPID5", "OF9", "12.10", "rejected"),
]


def cents(value: Decimal) -> Decimal:
    return value.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


@pytest.fixture
def reported(client, involve, make_publisher):
    rampup = make_publisher(
        report_recipients="ops@rampup.example, finance@rampup.example",
        url_template="https://pub.example/pb?c={conversion_id}",
        payout_value=Decimal("1"),
    )
    PublisherOfferPayout.objects.create(
        publisher=rampup, offer="OF9", payout_kind="percent_sale", payout_value=Decimal("2.5")
    )
    publisher_save(publisher=rampup)
    make_publisher(
        code="deep",
        name="DeepLeaper",
        match_regex="^(OPPO|VIVO)",
        report_recipients="deep@example.com",
        url_template="https://deep.example/pb",
    )
    make_publisher(code="quiet", name="Quiet", match_regex="^NOBODY", url_template="https://q.example/pb")
    for conversion_id, sub, offer, sale, status in SALES:
        involve_postback(
            client,
            conversion_id=conversion_id,
            aff_sub=sub,
            offer_id=offer,
            usd_sale_amount=sale,
            conversion_status=status,
            datetime_conversion="2026-01-07 08:00:00",
        )
    involve_postback(client, conversion_id="R-late", aff_sub="RPID9", datetime_conversion="2026-01-20 08:00:00")
    return rampup


def test_report_totals_equal_the_payout_rules_applied_to_its_conversions(reported):
    report = publisher_report(publisher=reported, start=datetime.date(2026, 1, 5), end=datetime.date(2026, 1, 11))
    assert [row[1] for row in report.rows] == ["R-1", "R-2", "R-3", "R-5"]
    rates = {"OF1": Decimal("1"), "OF9": Decimal("2.5")}
    expected = [cents(Decimal(sale) * rates[offer] / 100) for _id, sub, offer, sale, _s in SALES if sub != "OPPO4"]
    assert [row[-1] for row in report.rows] == expected  # 1.00, 0.83 (0.83325), 0.01 (0.005 half-up), 0.30
    assert report.total_payout == sum(expected[:3]) == Decimal("1.84")  # the rejected one is listed, not paid

    lines = list(csv.reader(io.StringIO(report_csv(report).decode())))
    assert lines[0][-1] == "payout" and [line[-1] for line in lines[1:-1]] == [f"{v}" for v in expected]
    assert lines[-1][0] == "total (not rejected)" and lines[-1][-1] == "1.84"

    sheet = load_workbook(io.BytesIO(report_xlsx(report))).active
    values = list(sheet.values)
    assert values[0][-1] == "payout" and len(values) == 6
    assert Decimal(str(values[-1][-1])) == Decimal("1.84")


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_scheduled_command_sends_one_mail_per_publisher_with_both_files(reported):
    out = io.StringIO()
    with LOCMEM:
        call_command("send_publisher_reports", "--start", "2026-01-05", "--end", "2026-01-11", stdout=out)
        assert len(mail.outbox) == 2  # rampup and deep; quiet has no recipients
        by_subject = {m.subject: m for m in mail.outbox}
    message = by_subject["Conversion report RAMPUP: 2026-01-05 to 2026-01-11"]
    assert message.to == ["ops@rampup.example", "finance@rampup.example"]
    assert [a[0] for a in message.attachments] == [
        "rampup-2026-01-05-2026-01-11.csv",
        "rampup-2026-01-05-2026-01-11.xlsx",
    ]
    assert "Payout (not rejected): USD 1.84" in message.body
    assert "R-2" in message.attachments[0][1]
    assert "quiet: no report recipients, skipped" in out.getvalue()


def test_last_week_is_monday_to_sunday():
    assert period_range("last-week", today=datetime.date(2026, 1, 14)) == (
        datetime.date(2026, 1, 5),
        datetime.date(2026, 1, 11),
    )
    assert period_range("last-month", today=datetime.date(2026, 3, 1)) == (
        datetime.date(2026, 2, 1),
        datetime.date(2026, 2, 28),
    )


def test_the_xlsx_report_keeps_text_as_text_without_the_csv_guard(reported):
    report = publisher_report(publisher=reported, start=datetime.date(2026, 1, 5), end=datetime.date(2026, 1, 11))
    hostile = ['=HYPERLINK("http://x")', "+1", "@SUM(A1)", "bell\x07"]
    report.rows = [
        tuple(hostile[n % len(hostile)] if isinstance(value, str) else value for n, value in enumerate(row))
        for row in report.rows
    ]
    sheet = load_workbook(io.BytesIO(report_xlsx(report))).active
    texts = [cell for row in sheet.iter_rows(min_row=2, max_row=len(report.rows) + 1) for cell in row if cell.value]
    strings = [cell for cell in texts if isinstance(cell.value, str)]
    assert strings and all(cell.data_type == "s" for cell in strings)
    assert not any(cell.value.startswith("'") for cell in strings)
    assert '=HYPERLINK("http://x")' in {cell.value for cell in strings}
    csv_lines = report_csv(report).decode()
    assert "'=HYPERLINK" in csv_lines  # the CSV keeps its guard
