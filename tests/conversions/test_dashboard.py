"""The admin's dashboards: one partner's, and all partners'; the numbers are the /stats API's."""

import json
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from html import unescape

import pytest
from django.contrib.auth.models import User
from rest_framework.authtoken.models import Token

from conversions.models import PartnerConversion
from partners.services import partner_create

DAY = datetime(2025, 3, 1, 10, 0, tzinfo=UTC)
RANGE = "start=2025-03-01&end=2025-03-03&time_field=received_at"


def add(partner, **fields) -> PartnerConversion:
    fields.setdefault("is_processed", not fields.get("is_duplicate") and not fields.get("processing_error"))
    return PartnerConversion.objects.using(partner.database_alias).create(partner_id=partner.pk, **fields)


def charts(response) -> dict[str, dict]:
    assert response.status_code == 200, response.content[:500]
    found = re.search(r'<script id="dashboard-data" type="application/json">(.*?)</script>', response.content.decode())
    assert found, "no chart data on the page"
    return {chart["id"]: chart for chart in json.loads(found.group(1))}


def series(chart: dict) -> dict[str, list]:
    return {dataset["label"]: dataset["data"] for dataset in chart["datasets"]}


def table(response, table_id: str, part: str = "tbody") -> list[list[str]]:
    """The rows of a table as shown (`part`: tbody, or tfoot for its totals row)."""
    html = response.content.decode().split(f'id="{table_id}"')[1].split("</table>")[0]
    if f"<{part}>" not in html:
        return []
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", html.split(f"<{part}>")[1].split(f"</{part}>")[0], re.S)
    return [
        [unescape(re.sub(r"<[^>]+>", "", cell)).strip() for cell in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
        for row in rows
    ]


def headlines(response) -> dict[str, str]:
    return dict(re.findall(r'data-total="(\w+)" data-value="[^"]*">([^<]*)<', response.content.decode()))


def usd(amount: str) -> str:
    return f"USD {Decimal(amount):,.2f}"


@pytest.fixture
def backend() -> str:
    return "sqlite"  # the selectors' SQL is covered on both backends by the /stats API tests


@pytest.fixture
def seeded(involve):
    """Three days: originals with statuses, offers and publisher-like sub_ids, a duplicate, a rejected postback."""
    rows = [
        # day, conversion_id, status, offer, sub_id, sale, earning
        (0, "a", "approved", ("10", "Shopee MY"), "RAMPUP-1", "100.00", "8.00"),
        (0, "b", "pending", ("10", "Shopee MY"), "RAMPUP-2", "50.50", "4.04"),
        (1, "c", "approved", ("20", "Lazada"), "OPPO-77", "20.00", "1.60"),
        (2, "d", None, ("20", "Lazada"), "MKK-1", "9.99", "0.80"),
        (2, "e", "approved", ("30", "Zalora"), None, "1.00", "0.10"),
    ]
    for day, conversion_id, status, (offer_id, offer_name), sub_id, sale, earning in rows:
        add(
            involve,
            conversion_id=conversion_id,
            status=status,
            offer_id=offer_id,
            offer_name=offer_name,
            sub_id=sub_id,
            usd_sale_amount=Decimal(sale),
            usd_earning=Decimal(earning),
            received_at=DAY + timedelta(days=day),
        )
    duplicate = {"is_duplicate": True, "status": "approved", "offer_id": "10", "sub_id": "RAMPUP-1"}
    add(involve, conversion_id="a", usd_sale_amount=Decimal(100), received_at=DAY + timedelta(hours=1), **duplicate)
    add(involve, conversion_id="", processing_error="usd_sale_amount: bad", received_at=DAY + timedelta(days=1))
    add(
        involve,
        conversion_id="late",
        status="approved",
        usd_sale_amount=Decimal(5),
        received_at=DAY + timedelta(days=9),
    )
    return involve


def test_partner_dashboard_draws_the_stats_apis_numbers(analyst_client, users, seeded):
    response = analyst_client.get(f"/admin/partners/partner/{seeded.pk}/dashboard/?{RANGE}")
    drawn = charts(response)

    token = Token.objects.create(user=users["analyst"]).key
    api = analyst_client.get(
        "/partner/involve/event/stats?from=2025-03-01&to=2025-03-03&compare=true",
        HTTP_AUTHORIZATION=f"Token {token}",
    ).json()
    days = [day["date"] for day in api["days"]]
    assert drawn["chart-outcomes"]["labels"] == days == ["2025-03-01", "2025-03-02", "2025-03-03"]
    assert series(drawn["chart-outcomes"]) == {
        "originals": [day["originals"] for day in api["days"]],
        "duplicates": [day["duplicates"] for day in api["days"]],
        "invalid": [day["rejected"] for day in api["days"]],
    }
    assert series(drawn["chart-outcomes"]) == {"originals": [2, 1, 2], "duplicates": [1, 0, 0], "invalid": [0, 1, 0]}
    assert series(drawn["chart-statuses"]) == {"pending": [1, 0, 0], "approved": [1, 1, 1], "no status": [0, 0, 1]}
    revenue = series(drawn["chart-revenue"])
    assert revenue["sales: approved"] == [100.0, 20.0, 1.0] and revenue["sales: pending"] == [50.5, 0, 0]
    # Earnings on their own axis, over approved + pending originals (no rejected sale here).
    earnings = next(d for d in drawn["chart-revenue"]["datasets"] if d.get("type") == "line")
    assert earnings["yAxisID"] == "earnings" and earnings["order"] == 0
    assert earnings["data"] == [float(day["usd_earning"]) for day in api["days"]] == [12.04, 1.6, 0.9]
    assert table(response, "table-statuses") == [
        [row["status"] or "no status", str(row["originals"]), f"{Decimal(row['originals']) / 5 * 100:.2f} %",
         str(row["duplicates"]), usd(row["usd_sale_amount"]), usd(row["usd_earning"])]
        for row in api["by_status"]
    ]  # fmt: skip
    # Newest day first, formatted, with a totals row; "no status" counts as pending.
    assert table(response, "table-days") == [
        ["2025-03-03", "2", "0", "0", "USD 1.00", "USD 9.99", "USD 0.00", "USD 0.90"],
        ["2025-03-02", "1", "0", "1", "USD 20.00", "USD 0.00", "USD 0.00", "USD 1.60"],
        ["2025-03-01", "2", "1", "0", "USD 100.00", "USD 50.50", "USD 0.00", "USD 12.04"],
    ]
    assert table(response, "table-days", "tfoot") == [
        ["total", "5", "1", "1", "USD 121.00", "USD 60.49", "USD 0.00", "USD 14.54"]
    ]
    # The headline cards are the API's summary, formatted; the previous period had nothing.
    summary = api["summary"]
    cards = headlines(response)
    assert cards["approved_usd_sale_amount"] == usd(summary["approved"]["usd_sale_amount"]) == "USD 121.00"
    assert cards["pending_usd_sale_amount"] == usd(summary["pending"]["usd_sale_amount"]) == "USD 60.49"
    assert cards["network_rejected_usd_sale_amount"] == "USD 0.00"
    assert cards["open_usd_earning"] == usd(summary["open_usd_earning"]) == "USD 14.54"
    assert cards["originals"] == "5" and cards["invalid"] == "1" and cards["duplicates"] == "1"
    assert cards["approval_rate"] == "60.00 %" and summary["approval_rate"] == "0.6000"
    assert api["previous"]["summary"]["originals"] == 0
    assert api["previous"]["range"]["start"] == "2025-02-26T00:00:00Z"
    # Top offers and sub_id prefixes (4 characters by default; originals only).
    assert drawn["chart-offers"]["labels"] == [offer["offer_name"] for offer in api["top_offers"]]
    assert drawn["chart-offers"]["labels"] == ["Shopee MY", "Lazada", "Zalora"]
    assert series(drawn["chart-offers"]) == {"originals": [2, 2, 1]}
    assert table(response, "table-offers")[0] == ["Shopee MY (10)", "2", "USD 100.00", "USD 50.50", "USD 12.04"]
    assert drawn["chart-prefixes"]["labels"] == ["RAMP", "OPPO", "MKK-", "(no sub_id)"]
    assert series(drawn["chart-prefixes"]) == {"originals": [2, 1, 1, 1]}
    assert table(response, "table-prefixes")[0] == ["RAMP", "2", "1", "USD 150.50", "USD 12.04"]

    longer = charts(analyst_client.get(f"/admin/partners/partner/{seeded.pk}/dashboard/?{RANGE}&prefix_length=6"))
    assert longer["chart-prefixes"]["labels"][0] == "RAMPUP"


def test_rejected_sales_are_apart_from_approved_and_pending(analyst_client, involve):
    for n, (status, sale) in enumerate((("approved", "1000.00"), ("paid", "500.00"), ("rejected", "117398939.53"),
                                        ("pending", "20.00"), (None, "5.00"))):  # fmt: skip
        add(involve, conversion_id=f"c{n}", status=status, usd_sale_amount=Decimal(sale),
            usd_earning=Decimal(sale) / 10, received_at=DAY)  # fmt: skip
    cards = headlines(analyst_client.get(f"/admin/partners/partner/{involve.pk}/dashboard/?{RANGE}"))
    assert cards["approved_usd_sale_amount"] == "USD 1,500.00"  # approved and paid
    assert cards["pending_usd_sale_amount"] == "USD 25.00"  # pending and no status
    assert cards["network_rejected_usd_sale_amount"] == "USD 117,398,939.53"
    assert cards["open_usd_earning"] == "USD 152.50"
    assert cards["approval_rate"] == "40.00 %" and cards["rejection_rate"] == "20.00 %"


def test_the_previous_period_is_compared(analyst_client, involve):
    add(involve, conversion_id="now", status="approved", usd_sale_amount=Decimal(150), received_at=DAY)
    add(
        involve,
        conversion_id="before",
        status="approved",
        usd_sale_amount=Decimal(100),
        received_at=DAY - timedelta(days=3),
    )
    add(
        involve,
        conversion_id="long ago",
        status="approved",
        usd_sale_amount=Decimal(7),
        received_at=DAY - timedelta(days=4),
    )
    response = analyst_client.get(f"/admin/partners/partner/{involve.pk}/dashboard/?{RANGE}")
    page = response.content.decode()
    assert re.search(r'data-change="approved_usd_sale_amount">\+50.0 % <span class="help">vs USD 100.00', page)
    assert 'data-change="originals">+0.0 %' in page


def test_dashboard_defaults_to_the_last_30_days_of_conversion(analyst_client, involve):
    today = datetime.now(UTC)
    add(involve, conversion_id="now", usd_sale_amount=Decimal(3), received_at=today, conversion_datetime=today)
    # Received today, converted three weeks ago: drawn on the day it converted, not as today's bar.
    late = today - timedelta(days=21)
    add(involve, conversion_id="late", usd_sale_amount=Decimal(3), received_at=today, conversion_datetime=late)
    add(
        involve,
        conversion_id="old",
        usd_sale_amount=Decimal(3),
        received_at=today,
        conversion_datetime=today - timedelta(days=30),
    )
    response = analyst_client.get(f"/admin/partners/partner/{involve.pk}/dashboard/")
    drawn = charts(response)
    labels = drawn["chart-outcomes"]["labels"]
    assert len(labels) == 30 and labels[-1] == today.date().isoformat()
    originals = series(drawn["chart-outcomes"])["originals"]
    assert sum(originals) == 2 and originals[labels.index(late.date().isoformat())] == 1
    assert table(response, "table-days")[0][0] == today.date().isoformat()  # newest first
    assert response.context["is_nav_sidebar_enabled"] is False


BAD_RANGES = [
    ("start=2025-03-05&end=2025-03-01", "must be on or after the &#x27;From&#x27; day."),
    ("start=soon", "Enter a valid date."),
    ("start=2024-01-01&end=2025-03-01", "the range may span at most 366 days."),
    ("start=0001-01-01&end=0001-01-02", "must be from 1971-01-01 to 2998-12-31."),
    ("end=9999-12-31", "must be from 1971-01-01 to 2998-12-31."),
    ("time_field=updated_at", "Select a valid choice."),
]


def test_bad_ranges_are_form_errors(analyst_client, involve):
    overview = "/admin/partners/partner/dashboard/"
    cases = [(url, query, message) for query, message in BAD_RANGES
             for url in (f"/admin/partners/partner/{involve.pk}/dashboard/", overview)]  # fmt: skip
    cases += [
        (f"/admin/partners/partner/{involve.pk}/dashboard/", "prefix_length=0", "greater than or equal to 1."),
        (overview, "top=1000", "Select a valid choice."),
        (overview, "sort=margin", "Select a valid choice."),
    ]
    for url, query, message in cases:
        response = analyst_client.get(f"{url}?{query}")
        assert response.status_code == 200, query
        assert message in response.content.decode(), query
        assert 'id="dashboard-data"' not in response.content.decode()


def test_each_table_downloads_as_csv(analyst_client, seeded):
    url = f"/admin/partners/partner/{seeded.pk}/dashboard/?{RANGE}"
    page = analyst_client.get(url).content.decode()
    for table_id in ("table-days", "table-statuses", "table-offers", "table-prefixes"):
        assert f'href="?{RANGE.replace("&", "&amp;")}&amp;export={table_id}"' in page
        response = analyst_client.get(f"{url}&export={table_id}")
        assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
        assert f"involve_asia-2025-03-01-{table_id[6:]}.csv" in response["Content-Disposition"]
    days = analyst_client.get(f"{url}&export=table-days").content.decode().splitlines()
    assert days[0] == "day,originals,duplicates,invalid,approved (USD),pending (USD),rejected (USD),earnings (USD)"
    assert days[1:] == [
        "2025-03-03,2,0,0,1.00,9.99,0.00,0.90",
        "2025-03-02,1,0,1,20.00,0.00,0.00,1.60",
        "2025-03-01,2,1,0,100.00,50.50,0.00,12.04",
        "total,5,1,1,121.00,60.49,0.00,14.54",
    ]
    overview = analyst_client.get(f"/admin/partners/partner/dashboard/?{RANGE}&export=table-partners")
    assert overview.content.decode().splitlines()[1].startswith("InvolveAsia,5,121.00,60.49,0.00,14.54,0.6000,1,1")
    refused = analyst_client.get(f"{url}&export=table-nothing")
    assert refused.status_code == 400 and b"no table 'table-nothing' here" in refused.content


def test_a_bar_or_an_offer_opens_its_conversions(analyst_client, seeded):
    response = analyst_client.get(f"/admin/partners/partner/{seeded.pk}/dashboard/?{RANGE}")
    drawn = charts(response)
    links = drawn["chart-statuses"]["links"]
    day = links["labels"][1]  # 2025-03-02
    approved = next(d for d in drawn["chart-statuses"]["datasets"] if d["label"] == "approved")
    url = links["base"] + "&" + "&".join(f"{k}={v}" for k, v in {**day, **approved["link"]}.items())
    listed = analyst_client.get(url)
    assert listed.status_code == 200
    assert listed.context["cl"].result_count == 1 and listed.context["cl"].result_list[0].conversion_id == "c"
    offer = re.search(r'<a href="([^"]+)">Shopee MY \(10\)</a>', response.content.decode()).group(1)
    listed = analyst_client.get(unescape(offer))
    assert sorted(row.conversion_id for row in listed.context["cl"].result_list) == ["a", "b"]  # originals only


def test_top_offer_names_are_one_query(analyst_client, involve):
    from django.db import connections
    from django.test.utils import CaptureQueriesContext

    def offer_queries(offers: int) -> int:
        PartnerConversion.objects.using(involve.database_alias).all().delete()
        for n in range(offers):
            add(involve, conversion_id=f"o{n}", offer_id=str(n), offer_name=f"Offer {n}", received_at=DAY)
        with CaptureQueriesContext(connections[involve.database_alias]) as queries:
            response = analyst_client.get(f"/admin/partners/partner/{involve.pk}/dashboard/?{RANGE}")
        assert len(charts(response)["chart-offers"]["labels"]) == offers
        return len(queries)

    assert offer_queries(1) == offer_queries(10)


def test_a_long_offer_name_is_cut_not_widening_the_table(analyst_client, involve):
    name = "X" * 60
    add(involve, conversion_id="long", offer_id="7", offer_name=name, received_at=DAY)
    response = analyst_client.get(f"/admin/partners/partner/{involve.pk}/dashboard/?{RANGE}")
    assert f'<td class="text" title="{name} (7)">' in response.content.decode()
    assert charts(response)["chart-offers"]["labels"] == ["X" * 31 + "…"]


def test_overview_shows_every_partner_side_by_side(analyst_client, seeded, rector):
    add(
        rector,
        conversion_id="r1",
        status="approved",
        usd_sale_amount=Decimal("7.00"),
        received_at=DAY + timedelta(days=2),
    )
    response = analyst_client.get(f"/admin/partners/partner/dashboard/?{RANGE}")
    drawn = charts(response)
    # Partner names everywhere, the biggest approved revenue first.
    assert series(drawn["chart-overview-originals"]) == {"InvolveAsia": [2, 1, 2], "Rector": [0, 0, 1]}
    assert series(drawn["chart-overview-revenue"]) == {"InvolveAsia": [100.0, 20.0, 1.0], "Rector": [0, 0, 7.0]}
    assert table(response, "table-partners") == [
        ["InvolveAsia", "5", "USD 121.00", "USD 60.49", "USD 0.00", "USD 14.54", "60.00 %", "1", "1"],
        ["Rector", "1", "USD 7.00", "USD 0.00", "USD 0.00", "USD 0.00", "100.00 %", "0", "0"],
    ]
    assert table(response, "table-partners", "tfoot") == [
        ["total", "6", "USD 128.00", "USD 60.49", "USD 0.00", "USD 14.54", "66.67 %", "1", "1"]
    ]
    assert table(response, "table-overview-days")[0] == [
        "2025-03-03", "3", "0", "0", "USD 8.00", "USD 9.99", "USD 0.00", "USD 0.90"
    ]  # fmt: skip
    assert "prefix_length" not in response.content.decode()
    by_name = analyst_client.get(f"/admin/partners/partner/dashboard/?{RANGE}&sort=originals&top=5")
    assert [row[0] for row in table(by_name, "table-partners")] == ["InvolveAsia", "Rector"]


def test_overview_charts_the_top_partners_and_the_others(analyst_client, make_partner):
    partners = [make_partner(f"p{n:02d}", partner_name=f"Partner {n:02d}") for n in range(7)]
    for n, partner in enumerate(partners):
        add(partner, conversion_id="x", status="approved", usd_sale_amount=Decimal(10 * (n + 1)), received_at=DAY)
    response = analyst_client.get(f"/admin/partners/partner/dashboard/?{RANGE}&top=5")
    revenue = series(charts(response)["chart-overview-revenue"])
    assert list(revenue) == ["Partner 06", "Partner 05", "Partner 04", "Partner 03", "Partner 02", "others (2)"]
    assert revenue["others (2)"] == [30.0, 0, 0]  # 10 + 20
    assert len(table(response, "table-partners")) == 7


def test_overview_names_a_partner_whose_database_is_down(analyst_client, involve):
    partner_create(
        partner_code="down",
        partner_name="Down",
        endpoint_path="/down/event",
        database_name="down_db",
        database_url="postgres://root@127.0.0.1:1/down_db?connect_timeout=1",
    )
    response = analyst_client.get("/admin/partners/partner/dashboard/")
    assert response.status_code == 200
    assert [row[0] for row in table(response, "table-partners")] == ["InvolveAsia", "Down"]  # unreadable last
    assert "database unavailable" in table(response, "table-partners")[1][1]
    down = response.context["results"][0].partner
    page = analyst_client.get(f"/admin/partners/partner/{down.pk}/dashboard/")
    assert page.status_code == 200 and "cannot be read right now" in page.content.decode()


def test_dashboards_need_the_view_permission_on_conversions(client, involve):
    client.force_login(User.objects.create_user("staff", password="pw", is_staff=True))
    assert client.get("/admin/partners/partner/dashboard/").status_code == 403


def test_links_to_the_dashboards(analyst_client, involve):
    listed = analyst_client.get("/admin/partners/partner/").content.decode()
    assert f'href="/admin/partners/partner/{involve.pk}/dashboard/"' in listed
    assert 'href="/admin/partners/partner/dashboard/"' in listed
    page = analyst_client.get(f"/admin/partners/partner/{involve.pk}/change/").content.decode()
    assert f'href="/admin/partners/partner/{involve.pk}/dashboard/"' in page
