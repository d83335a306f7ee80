"""A partner's dashboard and the publishers' reports say the same: per publisher, the same
originals, the same approved / pending / rejected sales, the same payouts; the headline
payouts and margin are their sums (docs/numbers.md)."""

import csv
import datetime
import io
import re
from decimal import Decimal

import pytest

from publishers.models import PublisherOfferPayout
from publishers.reports import publisher_report
from publishers.services import publisher_save
from tests.publishers.test_forwarding import involve_postback

SALES = [
    # conversion_id, sub_id, offer, sale, payout (earning), status, day
    ("R-1", "RPID1", "OF1", "100.00", "9.00", "pending", 5),
    ("R-2", "RAMPUP2", "OF9", "33.33", "3.00", "approved", 6),
    ("R-3", "RPID3", "OF1", "0.50", "0.05", "paid", 7),
    ("R-4", "OPPO4", "OF1", "80.00", "8.00", "pending", 7),
    ("R-5", "RPID5", "OF9", "12.10", "1.10", "rejected", 8),
    ("R-6", "VIVO6", "OF2", "999.99", "90.00", "approved", 9),
    ("R-7", "NOBODY7", "OF2", "5.00", "0.50", "approved", 9),
    ("R-8", "RPID8", "OF1", "44.00", "4.00", "approved", 20),  # after the range
]


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_the_dashboards_publishers_are_the_reports_totals(client, analyst_client, involve, make_publisher):
    rampup = make_publisher(payout_value=Decimal("1"))
    PublisherOfferPayout.objects.create(
        publisher=rampup, offer="OF9", payout_kind="percent_sale", payout_value=Decimal("2.5")
    )
    publisher_save(publisher=rampup)
    deep = make_publisher(code="deep", name="DeepLeaper", match_regex="^(OPPO|VIVO)", payout_kind="percent_earning",
                          payout_value=Decimal("40"))  # fmt: skip
    flat = make_publisher(code="flat", name="Flat", match_regex="", match_prefixes="RPID", payout_kind="fixed",
                          payout_value=Decimal("0.75"))  # fmt: skip
    for conversion_id, sub, offer, sale, earning, status, day in SALES:
        involve_postback(client, conversion_id=conversion_id, aff_sub=sub, offer_id=offer, usd_sale_amount=sale,
                         usd_payout=earning, conversion_status=status,
                         datetime_conversion=f"2026-01-{day:02d} 08:00:00")  # fmt: skip
    start, end = datetime.date(2026, 1, 5), datetime.date(2026, 1, 11)

    url = f"/admin/partners/partner/{involve.pk}/dashboard/?start={start}&end={end}&publishers=on"
    response = analyst_client.get(url)
    assert response.status_code == 200
    exported = list(csv.reader(io.StringIO(analyst_client.get(f"{url}&export=table-publishers").content.decode())))
    assert exported[0] == ["publisher", "originals", "approved (USD)", "pending (USD)", "rejected (USD)",
                           "earnings (USD)", "payouts (USD)", "margin (USD)"]  # fmt: skip
    rows = {row[0]: row[1:] for row in exported[1:]}
    payouts = Decimal(0)
    for publisher in (rampup, deep, flat):
        report = publisher_report(publisher=publisher, start=start, end=end)
        shown = rows[f"{publisher.name} ({publisher.code})"]
        assert int(shown[0]) == len(report.rows) > 0
        assert Decimal(shown[1]) == report.sales["approved"]
        assert Decimal(shown[2]) == report.sales["pending"]
        assert Decimal(shown[3]) == report.sales["network_rejected"]
        assert Decimal(shown[1]) + Decimal(shown[2]) == report.total_sale  # the report's total: not rejected
        assert Decimal(shown[5]) == report.total_payout
        earned = sum(Decimal(row[10]) for row in report.rows if row[8] != "rejected")
        assert Decimal(shown[4]) == earned and Decimal(shown[6]) == earned - report.total_payout
        payouts += report.total_payout
    # rampup 1.00 + 0.83 + 0.01 (R-5 rejected); deep 40 % of 8.00 + 90.00; flat 0.75 for.
    assert payouts == Decimal("1.84") + Decimal("39.20") + Decimal("1.50")
    cards = dict(re.findall(r'data-total="(\w+)" data-value="([^"]*)"', response.content.decode()))
    assert Decimal(cards["publisher_payouts"]) == payouts
    assert Decimal(cards["margin"]) == Decimal(cards["open_usd_earning"]) - payouts
    # Asked for: without the box, the page has neither the table nor the payouts.
    plain = analyst_client.get(url.replace("&publishers=on", "")).content.decode()
    assert "table-publishers" not in plain and 'data-total="margin"' not in plain


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_a_regex_postgresql_cannot_read_is_said_on_the_dashboard_not_a_500(client, analyst_client, involve,
                                                                            make_publisher):  # fmt: skip
    make_publisher(code="named", name="Named", match_regex=r"(?P<network>RP)ID\d+")  # Python's syntax only
    involve_postback(client, conversion_id="N-1", aff_sub="RPID1", datetime_conversion="2026-01-06 08:00:00")
    url = f"/admin/partners/partner/{involve.pk}/dashboard/?start=2026-01-05&end=2026-01-11&publishers=on"
    response = analyst_client.get(url)
    assert response.status_code == 200
    page = response.content.decode()
    assert 'id="publishers-error"' in page and "Simplify its regular expression" in page
    assert 'data-total="approved_usd_sale_amount"' in page  # the rest of the dashboard is there


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_prefixes_compare_case_sensitively_on_sqlite_as_the_ingest_does(client, analyst_client, involve,
                                                                         make_publisher):  # fmt: skip
    make_publisher(code="flat", name="Flat", match_regex="", match_prefixes="RPID", payout_kind="fixed",
                   payout_value=Decimal("0.75"))  # fmt: skip
    involve_postback(client, conversion_id="C-1", aff_sub="RPID1", datetime_conversion="2026-01-06 08:00:00")
    involve_postback(client, conversion_id="C-2", aff_sub="rpid2", datetime_conversion="2026-01-06 08:00:00")
    url = f"/admin/partners/partner/{involve.pk}/dashboard/?start=2026-01-05&end=2026-01-11&publishers=on"
    exported = list(csv.reader(io.StringIO(analyst_client.get(f"{url}&export=table-publishers").content.decode())))
    assert {row[0]: row[1] for row in exported[1:] if row[0] != "total"} == {"Flat (flat)": "1"}
