"""The dashboards in a real browser (Playwright driving Debian's Chromium) at 1400x900 against a
real gunicorn, with hostile data: 60-character unbroken partner and offer names, nine-digit
amounts, a year of days, more partners than the charts show one by one, and a thousand
partners for the overview (its headlines equal to SQL over every partner's table). Nothing needs
horizontal scrolling; the numbers are formatted; the earnings have their own axis above the
bars; a click on a bar opens its conversions. The README's dashboard pictures are taken here."""

import uuid
from decimal import Decimal

import psycopg
import pytest
from playwright.sync_api import expect
from psycopg import sql

from tests.conftest import POSTGRES_SERVER, postgres_drop
from tests.e2e.server import manage, running_server, service_env
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


# A thousand partners as schemas of one shared database (the layout for many partners),
# each with a few conversions of every kind, some with 60-character unbroken names.
THOUSAND = """
from partners.services import partner_create

for n in range(1000):
    code = f"net{n:04d}"
    name = f"N{n:04d}" + "W" * 55 if n % 97 == 0 else f"Network {n:04d}"
    partner_create(partner_code=code, partner_name=name, endpoint_path=f"/{code}/event", database_name=f"{code}_db")
print("created 1000 partners")
"""
# Once init_partners has provisioned them (in parallel): their conversions.
THOUSAND_CONVERSIONS = """
from psycopg import sql
from infra.databases import shared_database_cursor
from partners.models import Partner

insert = sql.SQL(
    "INSERT INTO {table} (partner_id, conversion_id, offer_id, offer_name, conversion_datetime, usd_sale_amount,"
    " usd_earning, status, currency, is_processed, is_duplicate, processing_error, raw_data, request_headers,"
    " request_digests, received_at, created_at, updated_at) "
    "SELECT {pk}, CASE WHEN k = 7 THEN '' ELSE {code} || '-' || CASE WHEN k = 6 THEN 1 ELSE k END END,"
    " 'o1', 'Offer ' || repeat('X', 50), now() - (k || ' days')::interval, {amount} * k, {amount} * k / 10,"
    " (ARRAY['approved', 'paid', 'approved', 'pending', 'rejected', 'approved', NULL])[k], 'USD',"
    " k <> 7, k = 6, CASE WHEN k = 7 THEN 'usd_sale_amount: bad' END, '{{}}', '{{}}', '[]',"
    " now(), now(), now() FROM generate_series(1, 7) AS k"
)
partners = list(Partner.objects.order_by("pk"))
alias = partners[0].database_alias
with shared_database_cursor(alias) as cursor:
    for partner in partners:
        schema = partner.database_name  # its schema in the shared database
        cursor.execute(insert.format(table=sql.Identifier(schema, "partner_conversions"), pk=sql.Literal(partner.pk),
                                     code=sql.Literal(partner.partner_code), amount=sql.Literal(partner.pk)))
    cursor.execute("ANALYZE")
print("seeded", len(partners))
"""


def test_the_overview_of_1000_partners_fits_1400px_and_its_numbers_equal_sql(tmp_path, browser):
    prefix = f"test_pb_thousand_{uuid.uuid4().hex[:8]}_"
    env = service_env(
        DATABASE_URL=f"postgres://root@127.0.0.1:5432/{prefix}default",
        PARTNER_DATABASE_URL=f"postgres://root@127.0.0.1:5432/{prefix}shared",  # no {name}: a schema each
        PARTNER_DATABASE_TEMPLATE=f"{prefix}template",
    )
    try:
        for command in (
            ["init_partners"],
            ["collectstatic", "--noinput"],
            ["shell", "-c", THOUSAND],
            ["init_partners"],  # provisions them, several at a time
            ["shell", "-c", THOUSAND_CONVERSIONS],
            ["shell", "-c", CREATE_USERS],
        ):
            done = manage(env, *command)
            assert done.returncode == 0, done.stderr
        expected = _overview_sql(f"{prefix}shared")
        with running_server(env, tmp_path / "server.log", workers=1) as base:
            page = browser.new_context(viewport={"width": WIDTH, "height": 900}).new_page()
            log_in(page, base, "analyst")
            page.goto(f"{base}/admin/partners/partner/dashboard/", timeout=60_000)
            expect(page.locator("#chart-overview-revenue")).to_have_attribute("data-rendered", "true")
            legend = page.evaluate(
                "() => Chart.getChart(document.getElementById('chart-overview-revenue')).data.datasets"
                ".map(d => d.label)"
            )
            assert len(legend) == 11 and legend[-1] == "others (992)"
            # The partners with the most approved revenue first (the largest amounts: the last ids).
            assert legend[0] == "Network 0999"
            expect(page.locator("#table-partners tbody tr")).to_have_count(1002)  # and the two seed partners
            assert page.locator("#table-partners tbody tr td.note").count() == 0  # every partner read
            headline = {
                key: page.locator(f'[data-total="{key}"]').get_attribute("data-value")
                for key in ("originals", "approved_usd_sale_amount", "pending_usd_sale_amount")
            }
            assert headline == expected
            assert_fits(page)
    finally:
        postgres_drop(prefix)  # its databases and the partners' roles


def _overview_sql(database: str) -> dict[str, str]:
    """The overview's headlines straight from every partner's table, under docs/numbers.md:
    originals (not duplicates, no processing error), every one of them converted in the last
    week (the default range is 30 days); approved = approved or paid, pending = pending or
    no status. A hundred tables a statement: a statement holds a lock on each table it reads."""
    with psycopg.connect(**{**POSTGRES_SERVER, "dbname": database}, autocommit=True) as conn:
        schemas = [
            row[0]
            for row in conn.execute(
                "SELECT table_schema FROM information_schema.tables WHERE table_name = 'partner_conversions'"
                " AND table_schema NOT LIKE '%template%'"  # the schema partners are made from
            )
        ]
        assert len(schemas) == 1002
        originals, approved, pending = 0, Decimal("0.00"), Decimal("0.00")
        for start in range(0, len(schemas), 100):
            union = sql.SQL(" UNION ALL ").join(
                sql.SQL(
                    "SELECT status, usd_sale_amount FROM {} WHERE NOT is_duplicate AND processing_error IS NULL"
                ).format(sql.Identifier(schema, "partner_conversions"))
                for schema in schemas[start : start + 100]
            )
            count, approved_sum, pending_sum = conn.execute(
                sql.SQL(
                    "SELECT count(*), coalesce(sum(usd_sale_amount) FILTER (WHERE status IN ('approved', 'paid')), 0),"
                    " coalesce(sum(usd_sale_amount) FILTER (WHERE status = 'pending' OR status IS NULL), 0)"
                    " FROM ({}) AS rows"
                ).format(union)
            ).fetchone()
            originals, approved, pending = originals + count, approved + approved_sum, pending + pending_sum
    return {
        "originals": str(originals),
        "approved_usd_sale_amount": str(approved),
        "pending_usd_sale_amount": str(pending),
    }
