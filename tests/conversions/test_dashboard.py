"""The admin's dashboards: one partner's, and all partners'; the numbers are the /stats API's."""

import json
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.contrib.auth.models import User
from rest_framework.authtoken.models import Token

from conversions.models import PartnerConversion
from partners.services import partner_create

DAY = datetime(2025, 3, 1, 10, 0, tzinfo=UTC)
RANGE = "start=2025-03-01&end=2025-03-03"


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


def table(response, table_id: str) -> list[list[str]]:
    html = response.content.decode().split(f'id="{table_id}"')[1].split("</table>")[0]
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", html.split("<tbody>")[1], re.S)
    return [
        [re.sub(r"<[^>]+>", "", cell).strip() for cell in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)] for row in rows
    ]


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
        "/partner/involve/event/stats?from=2025-03-01&to=2025-03-03", HTTP_AUTHORIZATION=f"Token {token}"
    ).json()
    days = [day["date"] for day in api["days"]]
    assert drawn["chart-outcomes"]["labels"] == days == ["2025-03-01", "2025-03-02", "2025-03-03"]
    assert series(drawn["chart-outcomes"]) == {
        "originals": [day["originals"] for day in api["days"]],
        "duplicates": [day["duplicates"] for day in api["days"]],
        "invalid": [day["rejected"] for day in api["days"]],
    }
    assert series(drawn["chart-outcomes"]) == {"originals": [2, 1, 2], "duplicates": [1, 0, 0], "invalid": [0, 1, 0]}
    # Split by status: per day, and in total as the API's by_status.
    assert series(drawn["chart-statuses"]) == {
        "pending": [1, 0, 0],
        "approved": [1, 1, 1],
        "no status": [0, 0, 1],
    }
    revenue = series(drawn["chart-revenue"])
    assert revenue["sales: approved"] == [100.0, 20.0, 1.0] and revenue["sales: pending"] == [50.5, 0, 0]
    assert revenue["earnings"] == [float(day["usd_earning"]) for day in api["days"]] == [12.04, 1.6, 0.9]
    assert table(response, "table-statuses") == [
        [row["status"] or "no status", str(row["originals"]), str(row["duplicates"]), row["usd_sale_amount"],
         row["usd_earning"]]
        for row in api["by_status"]
    ]  # fmt: skip
    # Top offers and sub_id prefixes (4 characters by default; originals only).
    assert drawn["chart-offers"]["labels"] == [offer["offer_name"] for offer in api["top_offers"]]
    assert drawn["chart-offers"]["labels"] == ["Shopee MY", "Lazada", "Zalora"]
    assert series(drawn["chart-offers"]) == {"originals": [2, 2, 1]}
    assert drawn["chart-prefixes"]["labels"] == ["RAMP", "OPPO", "MKK-", "(no sub_id)"]
    assert series(drawn["chart-prefixes"]) == {"originals": [2, 1, 1, 1]}
    assert table(response, "table-prefixes")[0] == ["RAMP", "2", "1", "150.50", "12.04"]
    totals = dict(re.findall(r'data-total="(\w+)">([^<]*)<', response.content.decode()))
    assert totals == {key: str(value) for key, value in api["totals"].items()}

    longer = charts(analyst_client.get(f"/admin/partners/partner/{seeded.pk}/dashboard/?{RANGE}&prefix_length=6"))
    assert longer["chart-prefixes"]["labels"][0] == "RAMPUP"


def test_dashboard_defaults_to_the_last_30_days(analyst_client, involve):
    today = datetime.now(UTC)
    add(involve, conversion_id="now", usd_sale_amount=Decimal(3), received_at=today)
    add(involve, conversion_id="old", usd_sale_amount=Decimal(3), received_at=today - timedelta(days=30))
    drawn = charts(analyst_client.get(f"/admin/partners/partner/{involve.pk}/dashboard/"))
    labels = drawn["chart-outcomes"]["labels"]
    assert len(labels) == 30 and labels[-1] == today.date().isoformat()
    assert sum(series(drawn["chart-outcomes"])["originals"]) == 1


BAD_RANGES = [
    ("start=2025-03-05&end=2025-03-01", "must be on or after the &#x27;From&#x27; day."),
    ("start=soon", "Enter a valid date."),
    ("start=2024-01-01&end=2025-03-01", "the range may span at most 366 days."),
    ("prefix_length=0", "Ensure this value is greater than or equal to 1."),
    ("time_field=updated_at", "Select a valid choice."),
]


def test_bad_ranges_are_form_errors(analyst_client, involve):
    for query, message in BAD_RANGES:
        for url in (f"/admin/partners/partner/{involve.pk}/dashboard/", "/admin/partners/partner/dashboard/"):
            response = analyst_client.get(f"{url}?{query}")
            assert response.status_code == 200, query
            assert message in response.content.decode(), query
            assert 'id="dashboard-data"' not in response.content.decode()


def test_overview_shows_every_partner_side_by_side(analyst_client, seeded, rector):
    add(rector, conversion_id="r1", usd_sale_amount=Decimal("7.00"), received_at=DAY + timedelta(days=2))
    response = analyst_client.get(f"/admin/partners/partner/dashboard/?{RANGE}")
    drawn = charts(response)
    assert series(drawn["chart-overview-originals"]) == {"involve_asia": [2, 1, 2], "rector": [0, 0, 1]}
    assert series(drawn["chart-overview-revenue"])["rector"] == [0, 0, 7.0]
    assert table(response, "table-partners") == [
        ["InvolveAsia", "5", "1", "1", "181.49", "14.54"],
        ["Rector", "1", "0", "0", "7.00", "0.00"],
    ]
    assert table(response, "table-overview-days")[2] == ["2025-03-03", "10.99 (2)", "7.00 (1)"]


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
    assert [row[0] for row in table(response, "table-partners")] == ["Down", "InvolveAsia"]
    assert "database unavailable" in table(response, "table-partners")[0][1]
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


def test_the_overview_leaves_out_the_table_by_day_past_fifty_partners(analyst_client, seeded, rector, monkeypatch):
    from conversions.admin import dashboards

    monkeypatch.setattr(dashboards, "OVERVIEW_DAYS_PARTNERS", 1)
    response = analyst_client.get(f"/admin/partners/partner/dashboard/?{RANGE}")
    assert response.status_code == 200
    assert "chart-overview-originals" in charts(response)
    assert b"table-overview-days" not in response.content
    assert b"The table by day is shown for up to 1 partners" in response.content
