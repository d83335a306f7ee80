"""The admin in a real browser (Playwright driving Debian's Chromium) against a real gunicorn.

An account manager adds a partner through the mapping table and copies its postback
URL; the partner's server calls it; an analyst finds that conversion and exports it.
The screenshots in the README are taken here, so they stay true.
"""

import csv
import io
import os
import tempfile
import uuid
from pathlib import Path
from urllib.parse import quote

import pytest
from playwright.sync_api import Page, expect

from tests.conftest import postgres_drop
from tests.e2e.server import PROJECT_DIR, fetch, manage, running_server, service_env

pytestmark = pytest.mark.e2e

# The README's screenshots: written to a temporary folder, and over docs/screenshots/
# only when asked (SCREENSHOTS_UPDATE=1), so a test run never changes tracked files.
SCREENSHOTS = (
    PROJECT_DIR / "docs" / "screenshots"
    if os.environ.get("SCREENSHOTS_UPDATE") == "1"
    else Path(tempfile.mkdtemp(prefix="postback-screenshots-"))
)
CREATE_USERS = """
from django.contrib.auth.models import Group, User
from partners.models import Partner, PartnerScope
for username, group in (("manager", "Account managers"), ("analyst", "Analysts"), ("ia_analyst", "Analysts")):
    user = User.objects.create_user(username, password="pw-" + username + "-1234", is_staff=True)
    user.groups.add(Group.objects.get(name=group))
# An analyst of InvolveAsia only.
PartnerScope.objects.create(user=User.objects.get(username="ia_analyst")).partners.add(
    Partner.objects.get(partner_code="involve_asia")
)
print("users created")
"""
WIDTH = 1400  # the account managers' and analysts' screens


@pytest.fixture
def postgres_prefix():
    prefix = f"test_pb_browser_{uuid.uuid4().hex[:8]}_"
    yield prefix
    postgres_drop(prefix)


@pytest.fixture
def server(tmp_path, postgres_prefix):
    env = service_env(
        DATABASE_URL=f"postgres://root@127.0.0.1:5432/{postgres_prefix}default",
        PARTNER_DATABASE_URL=f"postgres://root@127.0.0.1:5432/{postgres_prefix}{{name}}",
        PARTNER_DATABASE_TEMPLATE=f"{postgres_prefix}template",
    )
    for command in (["init_partners"], ["collectstatic", "--noinput"], ["shell", "-c", CREATE_USERS]):
        done = manage(env, *command)
        assert done.returncode == 0, done.stderr
    with running_server(env, tmp_path / "server.log") as base:
        yield base


def log_in(page: Page, base: str, username: str) -> None:
    page.goto(f"{base}/admin/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", f"pw-{username}-1234")
    page.click("input[type=submit]")
    expect(page.locator("#user-tools")).to_contain_text(username)


def assert_fits(page: Page) -> None:
    """Nothing on the page needs horizontal scrolling: not the page, not a list's own scroll box."""
    too_wide = page.evaluate(
        """() => [document.documentElement, ...document.querySelectorAll('.results, .dash-table, .dash-chart')]
            .filter(box => box.scrollWidth > box.clientWidth + 1)
            .map(box => `${box.className || box.tagName}: ${box.scrollWidth} > ${box.clientWidth}`)"""
    )
    assert too_wide == [], (page.url, too_wide)


def post_conversions(base: str) -> None:
    """Postbacks of the two seed partners over three days, with statuses, offers and publishers' sub_ids."""
    day = "2025-01-1{}%2010:00:00"
    involve = [
        ("IA-1", 3, "approved", "1021", "Shopee%20ID%20(Media%20Buyers)%20-%20CPS", "RAMPUP-17", "93.47", "4.67"),
        ("IA-2", 3, "pending", "1021", "Shopee%20ID%20(Media%20Buyers)%20-%20CPS", "OPPO-2", "20.00", "1.00"),
        ("IA-3", 4, "approved", "2044", "Lazada%20MY", "MKK-5", "55.10", "2.75"),
        ("IA-4", 5, "approved", "2044", "Lazada%20MY", "RAMPUP-99", "10.00", "0.50"),
    ]
    for conversion_id, n, status, offer_id, offer_name, sub_id, sale, payout in involve:
        status_code, body = fetch(
            f"{base}/partner/involve/event?conversion_id={conversion_id}&datetime_conversion={day.format(n)}"
            f"&conversion_status={status}&offer_id={offer_id}&offer_name={offer_name}&aff_sub={sub_id}"
            f"&usd_sale_amount={sale}&usd_payout={payout}&aff_sub3=click-{conversion_id}-abcdef0123456789"
        )
        assert (status_code, body["status"]) == (200, "success"), body
    assert fetch(f"{base}/partner/involve/event?conversion_id=IA-1&aff_sub=RAMPUP-17")[1]["status"] == "duplicate"
    assert fetch(f"{base}/partner/involve/event?conversion_id=IA-5&usd_payout=abc")[0] == 400
    assert fetch(f"{base}/partner/rector/event?conversion_id=R-1&usd_sale_amount=12.5&sub_id=r-sub")[0] == 200


def test_account_manager_adds_a_partner_and_analyst_exports_its_conversion(server, browser, tmp_path):
    base = server
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    # --- the account manager adds a partner through the mapping table ---------------
    context = browser.new_context(viewport={"width": WIDTH, "height": 900})
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=base)
    manager = context.new_page()
    log_in(manager, base, "manager")
    manager.goto(f"{base}/admin/partners/partner/add/")
    manager.fill("#id_partner_code", "shopback")
    manager.fill("#id_partner_name", "ShopBack")
    manager.fill("#id_endpoint_path", "/shopback/postback")  # the database name is left to the code: shopback_db
    mapping = [
        ("conversion_id", "txn_id"),
        ("sub_id", "aff_click"),
        ("usd_earning", "commission"),
        ("conversion_datetime", "event_time"),
    ]
    for row, (field, param) in enumerate(mapping):
        manager.select_option(f'select[name="parameter_mapping-{row}-field"]', field)
        manager.fill(f'input[name="parameter_mapping-{row}-param"]', param)
    manager.click('input[name="_continue"]')
    expect(manager.locator(".messagelist")).to_contain_text("was added successfully")
    expect(manager.locator(".messagelist")).to_contain_text("A new database, shopback_db, was created")
    expect(manager.locator(".messagelist")).not_to_contain_text("sqlite")
    expect(manager.locator(".messagelist")).not_to_contain_text("postgres://")

    postback_url = manager.locator("#postback-url").inner_text().strip()
    assert postback_url == (
        f"{base}/partner/shopback/postback?conversion_id={{txn_id}}&conversion_datetime={{event_time}}"
        "&usd_earning={commission}&sub_id={aff_click}"
    )
    # the mapping rows come back in the order they were typed
    params = [manager.input_value(f'input[name="parameter_mapping-{row}-param"]') for row in range(len(mapping))]
    assert params == [param for _, param in mapping]
    manager.click("#copy-postback-url")
    expect(manager.locator("#copy-status")).to_have_text("Copied to the clipboard.")
    expect(manager.locator("#copy-postback-url")).to_have_text("Copied ✓")
    assert manager.evaluate("navigator.clipboard.readText()") == postback_url
    expect(manager.locator("#secret-action")).to_have_text("Generate…")
    manager.screenshot(path=str(SCREENSHOTS / "partner_change.png"), full_page=True)

    # --- the partner's server calls the pasted URL with its macros filled ---------------
    values = {"txn_id": "SB-1001", "event_time": "2025-02-01 10:00:00", "commission": "2.5", "aff_click": "clk-42"}
    for number, (conversion_id, sub_id) in enumerate((("SB-1001", "clk-42"), ("SB-1002", "clk-43"))):
        url = postback_url
        for macro, value in {**values, "txn_id": conversion_id, "aff_click": sub_id}.items():
            url = url.replace("{" + macro + "}", quote(value))
        status, body = fetch(url)
        assert (status, body["status"]) == (200, "success"), (number, body)

    # --- the analyst finds that conversion and exports it ---------------------------------
    analyst = browser.new_context(viewport={"width": WIDTH, "height": 900}, accept_downloads=True).new_page()
    log_in(analyst, base, "analyst")
    analyst.goto(f"{base}/admin/conversions/partnerconversion/")
    analyst.select_option("#partner-select", "shopback")
    analyst.wait_for_url("**partner=shopback**")
    expect(analyst.locator("h1")).to_have_text("Conversions of ShopBack")
    expect(analyst.locator("#result_list tbody tr")).to_have_count(2)
    assert_fits(analyst)  # the guide's picture of the list is tests/e2e/test_lists_browser.py's

    analyst.fill("#searchbar", "SB-1001")
    analyst.press("#searchbar", "Enter")
    analyst.wait_for_url("**q=SB-1001**")
    rows = analyst.locator("#result_list tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("clk-42")
    assert "partner=shopback" in analyst.url

    analyst.check("#action-toggle")
    analyst.select_option('select[name="action"]', "export_csv")
    with analyst.expect_download() as download_info:
        analyst.click('button[name="index"]')
    download = download_info.value
    assert download.suggested_filename == "shopback-conversions.csv"
    exported = list(csv.DictReader(io.StringIO(Path(download.path()).read_text())))
    assert [(r["conversion_id"], r["sub_id"], r["usd_earning"]) for r in exported] == [("SB-1001", "clk-42", "2.50")]
    assert exported[0]["conversion_datetime"] == "2025-02-01T10:00:00+00:00"
    assert exported[0]["is_duplicate"] == "false" and exported[0]["processing_error"] == ""


def test_every_list_fits_1400px_the_dashboard_draws_real_data_and_a_scoped_analyst_sees_only_theirs(
    server, browser, tmp_path
):
    base = server
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    post_conversions(base)
    today = __import__("datetime").date.today().isoformat()  # received today: the dashboard's default range
    context = browser.new_context(viewport={"width": WIDTH, "height": 900})
    analyst = context.new_page()
    log_in(analyst, base, "analyst")

    # --- every list fits at 1400 px, a third partner included ------------------------------
    manager = browser.new_context(viewport={"width": WIDTH, "height": 900}).new_page()
    log_in(manager, base, "manager")
    manager.goto(f"{base}/admin/partners/partner/add/")
    for field, value in (("partner_code", "shopback"), ("partner_name", "ShopBack Indonesia"),
                         ("endpoint_path", "/shopback/postback"), ("database_name", "shopback_db")):  # fmt: skip
        manager.fill(f"#id_{field}", value)
    manager.click('input[name="_save"]')
    expect(manager.locator(".messagelist")).to_contain_text("was added successfully")
    # The lists analysts and account managers have (the users, groups and scopes lists are the superuser's).
    for url in (
        "/admin/partners/partner/",
        "/admin/conversions/partnerconversion/?partner=involve_asia",
        "/admin/conversions/partnerconversion/?partner=rector",
        "/admin/conversions/partnerconversion/?partner=shopback",
    ):
        for page in (analyst, manager):
            assert page.goto(base + url).status == 200, url
            assert_fits(page)
    analyst.goto(f"{base}/admin/conversions/partnerconversion/?partner=involve_asia")
    expect(analyst.locator("#result_list thead")).to_contain_text("Received")
    expect(analyst.locator("#result_list tbody tr").first).to_be_visible()

    # --- the dashboard draws the partner's real numbers, with the tables beside the charts ----------
    analyst.goto(f"{base}/admin/partners/partner/")
    analyst.locator("td.field-conversions_link", has_text="dashboard").first.locator("text=dashboard").click()
    expect(analyst.locator("h1")).to_have_text("Dashboard: InvolveAsia")
    # By the days of receipt (today): the conversions happened in January 2025.
    analyst.goto(analyst.url.split("?")[0] + "?time_field=received_at")
    for chart in ("outcomes", "statuses", "revenue", "offers", "prefixes"):
        expect(analyst.locator(f"#chart-{chart}")).to_have_attribute("data-rendered", "true")
    drawn = analyst.evaluate(
        """() => Object.fromEntries([...document.querySelectorAll('canvas')].map(canvas => {
            const chart = Chart.getChart(canvas);
            return [canvas.id, {labels: chart.data.labels,
                    data: Object.fromEntries(chart.data.datasets.map(d => [d.label, d.data]))}];
        }))"""
    )
    on_today = drawn["chart-outcomes"]["labels"].index(today)
    assert drawn["chart-outcomes"]["data"]["originals"][on_today] == 4
    assert drawn["chart-outcomes"]["data"]["duplicates"][on_today] == 1
    assert drawn["chart-outcomes"]["data"]["invalid"][on_today] == 1
    assert drawn["chart-statuses"]["data"]["approved"][on_today] == 3
    assert drawn["chart-statuses"]["data"]["pending"][on_today] == 1
    assert drawn["chart-offers"]["labels"] == ["Shopee ID (Media Buyers) - CPS", "Lazada MY"]
    assert drawn["chart-prefixes"]["labels"][0] == "RAMP" and drawn["chart-prefixes"]["data"]["originals"][0] == 2
    # Approved and pending apart: IA-1, IA-3, IA-4 approved (158.57), IA-2 pending (20.00).
    expect(analyst.locator("#table-days tbody tr").first).to_contain_text(today)  # newest first
    expect(analyst.locator('[data-total="approved_usd_sale_amount"]')).to_have_text("USD 158.57")
    expect(analyst.locator('[data-total="pending_usd_sale_amount"]')).to_have_text("USD 20.00")
    assert_fits(analyst)
    analyst.goto(f"{base}/admin/partners/partner/dashboard/")
    expect(analyst.locator("#chart-overview-originals")).to_have_attribute("data-rendered", "true")
    assert analyst.locator("#table-partners tbody tr").count() == 3
    assert_fits(analyst)

    # --- a scoped analyst sees only InvolveAsia, everywhere, and gets 404 for the others --------------
    scoped = browser.new_context(viewport={"width": WIDTH, "height": 900}).new_page()
    log_in(scoped, base, "ia_analyst")
    scoped.goto(f"{base}/admin/partners/partner/")
    expect(scoped.locator("#result_list tbody tr")).to_have_count(1)
    expect(scoped.locator("#result_list")).to_contain_text("involve_asia")
    scoped.goto(f"{base}/admin/conversions/partnerconversion/")
    expect(scoped.locator("h1")).to_have_text("Conversions of InvolveAsia")
    assert scoped.locator("#partner-select option").all_inner_texts() == ["InvolveAsia (involve_asia)"]
    assert "rector" not in scoped.content().lower()
    scoped.goto(f"{base}/admin/partners/partner/dashboard/")
    assert scoped.locator("#table-partners tbody tr").all_inner_texts()[0].startswith("InvolveAsia")
    assert scoped.locator("#table-partners tbody tr").count() == 1
    rector_id = analyst.evaluate(
        """async () => { const page = await fetch('/admin/partners/partner/?q=rector');
                         return (await page.text()).match(/partner\\/(\\d+)\\/change/)[1]; }"""
    )
    for url in (
        f"/admin/partners/partner/{rector_id}/change/",
        f"/admin/partners/partner/{rector_id}/dashboard/",
        f"/admin/partners/partner/{rector_id}/test-postback/",
        "/admin/conversions/partnerconversion/?partner=rector",
        "/admin/conversions/partnerconversion/1/change/?partner=rector",
    ):
        assert scoped.goto(base + url).status == 404, url
    for path, visible in (("involve/event", 200), ("rector/event", 404), ("shopback/postback", 404)):
        for read in ("stats", "conversions", "conversions?format=csv"):
            assert scoped.request.get(f"{base}/partner/{path}/{read}").status == visible, (path, read)
    assert analyst.request.get(f"{base}/partner/rector/event/stats").status == 200  # unscoped: everything

    # --- no page asked for a favicon in vain --------------------------------------------------------
    icon = analyst.request.get(f"{base}/favicon.ico")  # what the browser asks each page for
    assert (icon.status, icon.headers["content-type"]) == (200, "image/png")
    log = (tmp_path / "server.log").read_text()
    assert "favicon" not in log, [line for line in log.splitlines() if "favicon" in line]
