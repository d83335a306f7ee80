"""The dashboards in a real browser (Playwright driving Debian's Chromium) at 1400x900 against a
real gunicorn, with hostile data: 60-character unbroken partner and offer names, nine-digit
amounts, a year of days, more partners than the charts show one by one. Nothing needs
horizontal scrolling; the numbers are formatted; the earnings have their own axis above the
bars; a click on a bar opens its conversions. The README's dashboard pictures are taken here."""

import pytest
from playwright.sync_api import expect

from tests.e2e.server import manage, running_server
from tests.e2e.test_admin_browser import CREATE_USERS, SCREENSHOTS, WIDTH, assert_fits, log_in

pytestmark = pytest.mark.e2e

HOSTILE = """
import datetime, random
from decimal import Decimal
from django.db import connections
from django.utils import timezone
from conversions.models import PartnerConversion
from infra.databases import partner_database_provision
from partners.models import Partner
from partners.services import partner_create
from publishers.models import Publisher

rng = random.Random(3)
today = timezone.now().replace(hour=10, minute=0, second=0, microsecond=0)
partners = [Partner.objects.get(partner_code="involve_asia"), Partner.objects.get(partner_code="rector")]
for n in range(12):
    partner = partner_create(partner_code=f"wide{n:02d}", partner_name=f"W{n:02d}" + "M" * 57,
                             endpoint_path=f"/wide{n:02d}/event", database_name=f"wide{n:02d}_db")
    partner_database_provision(partner=partner)
    connections[partner.database_alias].close()
    partners.append(partner)
Publisher.objects.create(code="rampup", name="R" * 60, match_prefixes="RAMPUP", url_template="https://pub.example/pb",
                         payout_kind="percent_sale", payout_value=Decimal("1.5"))
for index, partner in enumerate(partners):
    rows = []
    for n in range(400 if index == 0 else 20):
        converted = today - datetime.timedelta(days=rng.randint(0, 29), hours=rng.randint(0, 9))
        rows.append(PartnerConversion(
            partner_id=partner.pk, conversion_id=f"{partner.partner_code}-{n}",
            offer_id=str(n % 12), offer_name=("O" * 60) if n % 12 == 0 else f"Offer {n % 12}",
            status=rng.choice(["approved", "approved", "paid", "pending", "rejected", None]),
            is_duplicate=n % 23 == 0, processing_error="usd_sale_amount: bad" if n % 31 == 0 else None,
            usd_sale_amount=Decimal(rng.randint(100, 99_999_999_99)) / 100,
            usd_earning=Decimal(rng.randint(1, 999_999_99)) / 100,
            sub_id=("RAMPUP" if n % 2 else "S") + "X" * 54, conversion_datetime=converted,
            received_at=converted + datetime.timedelta(days=rng.choice([0, 0, 12])),
        ))
    PartnerConversion.objects.using(partner.database_alias).bulk_create(rows)
    connections[partner.database_alias].close()  # one process, fourteen databases: give each back
print("seeded", len(partners))
"""


def test_the_dashboards_fit_1400px_with_hostile_data(tmp_path, postgres_env, browser):
    env = {key: value for key, value in postgres_env.items() if key != "_PREFIX"}
    for command in (["collectstatic", "--noinput"], ["shell", "-c", CREATE_USERS], ["shell", "-c", HOSTILE]):
        done = manage(env, *command)
        assert done.returncode == 0, done.stderr
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with running_server(env, tmp_path / "server.log", workers=1) as base:
        page = browser.new_context(viewport={"width": WIDTH, "height": 900}).new_page()
        log_in(page, base, "analyst")

        # --- one partner's dashboard: the default range (30 days of conversion time) -------------
        page.goto(f"{base}/admin/partners/partner/")
        page.locator("td.field-conversions_link", has_text="dashboard").first.locator("text=dashboard").click()
        expect(page.locator("h1")).to_have_text("Dashboard: InvolveAsia")
        for chart in ("revenue", "outcomes", "statuses", "offers", "prefixes"):
            expect(page.locator(f"#chart-{chart}")).to_have_attribute("data-rendered", "true")
        assert page.locator("#nav-sidebar").count() == 0  # the whole width for the charts
        assert_fits(page)
        # Formatted with the currency; changes against the previous period.
        expect(page.locator('[data-total="approved_usd_sale_amount"]')).to_have_text(
            __import__("re").compile(r"^USD \d{1,3}(,\d{3})+\.\d{2}$")
        )
        expect(page.locator('[data-total="originals"]')).to_have_text(__import__("re").compile(r"^\d{3}$"))
        # Newest day first in the day table; a long offer name is cut, whole in its title.
        first_day = page.locator("#table-days tbody tr").first.locator("td").first.inner_text()
        last_day = page.locator("#table-days tbody tr").last.locator("td").first.inner_text()
        assert first_day > last_day
        long_offer = page.locator("#table-offers td.text", has_text="OOOO").first
        assert long_offer.get_attribute("title").startswith("O" * 60)
        box = page.locator("#table-offers").bounding_box()
        assert box["width"] <= page.locator("#table-offers").locator("xpath=..").bounding_box()["width"] + 1
        # Earnings: a line on its own right axis, drawn above the bars.
        earnings = page.evaluate(
            """() => { const chart = Chart.getChart(document.getElementById('chart-revenue'));
                       const line = chart.data.datasets.find(d => d.type === 'line');
                       const bars = chart.data.datasets.filter(d => d.type !== 'line');
                       return {axis: line.yAxisID, position: chart.scales[line.yAxisID].position,
                               above: bars.every(bar => bar.order > line.order)}; }"""
        )
        assert earnings == {"axis": "earnings", "position": "right", "above": True}
        # Publishers' payouts and the margin, when asked for.
        page.check("#id_publishers")
        page.click("#dashboard-range input[type=submit]")
        page.wait_for_url("**publishers=on**")
        expect(page.locator("#table-publishers tbody tr")).to_have_count(1)
        expect(page.locator('[data-total="margin"]')).to_have_text(__import__("re").compile(r"^USD -?[\d,]+\.\d{2}$"))
        expect(page.locator("#chart-statuses")).to_have_attribute("data-rendered", "true")
        assert_fits(page)
        page.screenshot(path=str(SCREENSHOTS / "dashboard.png"), full_page=True)

        # A bar opens that day's conversions of that status.
        canvas = page.locator("#chart-statuses")
        point = page.evaluate(
            """() => { const chart = Chart.getChart(document.getElementById('chart-statuses'));
                       const index = chart.data.labels.length - 1;
                       const dataset = chart.data.datasets.findIndex(d => d.label === 'approved');
                       let day = index;
                       while (chart.data.datasets[dataset].data[day] === 0) day -= 1;
                       const bar = chart.getDatasetMeta(dataset).data[day];
                       return {x: bar.x, y: (bar.y + bar.base) / 2, day: chart.data.labels[day]}; }"""
        )
        canvas.click(position={"x": point["x"], "y": point["y"]})
        page.wait_for_url("**/conversions/partnerconversion/**")
        assert f"conversion_datetime__range_from={point['day']}" in page.url and "status=approved" in page.url
        expect(page.locator("#result_list tbody tr").first).to_be_visible()

        # --- the overview: 14 partners, 10 in the charts, the rest as one series -----------------
        page.goto(f"{base}/admin/partners/partner/dashboard/")
        expect(page.locator("#chart-overview-revenue")).to_have_attribute("data-rendered", "true")
        legend = page.evaluate(
            "() => Chart.getChart(document.getElementById('chart-overview-revenue')).data.datasets.map(d => d.label)"
        )
        assert len(legend) == 11 and legend[-1] == "others (4)"
        colours = page.evaluate(
            "() => Chart.getChart(document.getElementById('chart-overview-revenue')).data.datasets"
            ".map(d => d.backgroundColor)"
        )
        assert len(set(colours)) == 11
        expect(page.locator("#table-partners tbody tr")).to_have_count(14)
        expect(page.locator("#table-partners tfoot td").first).to_have_text("total")
        assert page.locator("#id_prefix_length").count() == 0
        assert_fits(page)
        page.screenshot(path=str(SCREENSHOTS / "overview.png"), full_page=True)

        # A year of days still fits.
        page.goto(f"{base}/admin/partners/partner/dashboard/?start=2025-01-01&end=2025-12-31&top=20")
        expect(page.locator("#table-overview-days tbody tr")).to_have_count(365)
        assert_fits(page)
