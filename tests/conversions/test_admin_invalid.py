"""An invalid postback and a sale the network rejected are two things: two words and two
colours in the admin's filters, badges and dashboards; old bookmarks still filter."""

import re
from pathlib import Path

import pytest

from tests.conftest import partner_rows
from tests.conversions.test_admin import LIST_URL, listed_ids, page_text, post
from tests.conversions.test_dashboard import RANGE, add, charts, series

pytestmark = pytest.mark.parametrize("backend", ["sqlite"])
STATIC = Path(__file__).resolve().parents[2] / "conversions" / "static" / "conversions"


def seed(client) -> None:
    post(client, "/partner/involve/event?conversion_id=OK-1&conversion_status=approved")
    post(client, "/partner/involve/event?conversion_id=NO-1&conversion_status=rejected")  # the network said no
    post(client, "/partner/involve/event?aff_sub=no-id")  # invalid: no conversion_id


def test_the_invalid_filter_and_the_bookmarks_of_before_the_rename(analyst_client, involve):
    seed(analyst_client)
    base = f"{LIST_URL}?partner=involve_asia"
    for value in ("invalid", "yes", "rejected"):  # the value now; the ones bookmarked before
        assert listed_ids(analyst_client.get(f"{base}&has_error={value}")) == ["-"], value
    assert sorted(listed_ids(analyst_client.get(f"{base}&has_error=no"))) == ["NO-1", "OK-1"]
    bookmarked = analyst_client.get(f"{base}&has_error=yes").content.decode()
    chosen = re.findall(r'<li class="selected">\s*<a href="([^"]*)"[^>]*>([^<]*)</a>', bookmarked)
    assert "Invalid (has an error)" in [label for _, label in chosen], chosen
    assert "By validity" in page_text(analyst_client.get(base))
    # The network's status keeps its word.
    assert listed_ids(analyst_client.get(f"{base}&status=rejected")) == ["NO-1"]
    assert re.search(r'<a href="[^"]*status=rejected[^"]*"[^>]*>Rejected</a>', bookmarked)


def test_an_invalid_row_and_a_rejected_sale_wear_different_badges(analyst_client, involve):
    seed(analyst_client)
    listing = analyst_client.get(f"{LIST_URL}?partner=involve_asia&rows=all").content.decode()
    assert '<span class="pc-badge pc-outcome-invalid">invalid</span>' in listing
    assert '<span class="pc-badge pc-status-rejected">rejected</span>' in listing
    assert "pc-outcome-rejected" not in listing and "conversions/admin.css" in listing
    invalid = partner_rows(involve).get(processing_error__isnull=False)
    detail = analyst_client.get(f"{LIST_URL}{invalid.pk}/change/?partner=involve_asia").content.decode()
    assert '<span class="pc-badge pc-outcome-invalid">invalid</span>' in detail

    css = (STATIC / "admin.css").read_text()

    def colours(selector: str) -> str:
        return re.search(re.escape(selector) + r"[^{]*\{([^}]*)\}", css).group(1)

    assert colours(".pc-outcome-invalid") != colours(".pc-status-rejected")


def test_the_dashboard_draws_invalid_postbacks_apart_from_rejected_sales(analyst_client, involve):
    from datetime import UTC, datetime
    from decimal import Decimal

    day = datetime(2025, 3, 1, 10, 0, tzinfo=UTC)
    add(involve, conversion_id="a", status="rejected", usd_sale_amount=Decimal(1), received_at=day)
    add(involve, conversion_id="", processing_error="usd_sale_amount: bad", received_at=day)
    response = analyst_client.get(f"/admin/partners/partner/{involve.pk}/dashboard/?{RANGE}")
    drawn = charts(response)
    assert series(drawn["chart-outcomes"])["invalid"] == [1, 0, 0]
    assert series(drawn["chart-statuses"])["rejected"] == [1, 0, 0]
    kinds = {d["label"]: d["kind"] for chart in drawn.values() for d in chart["datasets"] if "kind" in d}
    assert (kinds["invalid"], kinds["rejected"]) == ("outcome:invalid", "status:rejected")
    script = (STATIC / "dashboard.js").read_text()
    drawn_in = dict(re.findall(r'"((?:outcome|status):\w+)": "(#[0-9a-f]{6})"', script))
    assert drawn_in["outcome:invalid"] != drawn_in["status:rejected"]
    assert '<th class="num">invalid</th>' in response.content.decode()
