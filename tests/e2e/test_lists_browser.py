"""The conversions list, its invalid view and a conversion's page at 1400x900 in a real
browser (Playwright driving Debian's Chromium) against a real gunicorn, with what partners
really send: 60-character names and ids without a space, six- and seven-digit amounts,
invalid postbacks with long errors. Nothing scrolls sideways, every column shows, ids
never wrap. The guide's screenshot of the list is taken here."""

import re
from urllib.parse import quote

import pytest
from playwright.sync_api import Page, expect

from tests.e2e.server import fetch, manage, running_server
from tests.e2e.test_admin_browser import CREATE_USERS, SCREENSHOTS, WIDTH, assert_fits, log_in, post_conversions

pytestmark = pytest.mark.e2e

LIST = "/admin/conversions/partnerconversion/?partner=involve_asia"
OFFER = "Zalora_SG_CPS_AppInstall_2025Q1_MegaSale_Retargeting_Android"  # 60 characters, no space
SUB_ID = "RAMPUP_" + "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822c"  # 55 characters
ISO_MOMENT = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$")
CLICK_ID = "click_" + "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495"  # 58 characters


def post_hostile(base: str) -> None:
    """Originals with long unbroken values and big amounts, and invalid postbacks with long errors."""
    for n, (sale, payout) in enumerate((("1234567.89", "98765.43"), ("456789.10", "22839.45"), ("999999.99", "5.00"))):
        status, body = fetch(
            f"{base}/partner/involve/event?conversion_id=ZSG-{n}-{'7' * 40}&offer_id=90{n}&offer_name={OFFER}"
            f"&aff_sub={SUB_ID}{n}&aff_sub3={CLICK_ID}{n}&usd_sale_amount={sale}&usd_payout={payout}"
            f"&conversion_status=approved&datetime_conversion=2025-01-1{n}%2020:13:05"
        )
        assert (status, body["status"]) == (200, "success"), body
    for n in range(2):
        bad = quote("not-a-number-" + "x" * 50)
        status, body = fetch(
            f"{base}/partner/involve/event?conversion_id=BAD-{n}&offer_name={OFFER}&aff_sub={SUB_ID}"
            f"&usd_sale_amount={bad}&usd_payout={bad}&datetime_conversion={bad}&aff_sub3={CLICK_ID}"
        )
        assert status == 400, body


def assert_row_fits(page: Page) -> None:
    """Every column is inside the window, and ids keep to one line (cut with an ellipsis)."""
    placement = page.evaluate(
        """() => {
            const table = document.querySelector('#result_list');
            const last = table.querySelector('thead th:last-child').getBoundingClientRect();
            const ids = [...table.querySelectorAll(
                'td.field-sub_id_label, td.field-click_id_label, th.field-conversion_id')];
            const style = cell => getComputedStyle(cell).whiteSpace + '/' + getComputedStyle(cell).textOverflow;
            // A value on two lines has boxes at two heights (an ellipsis adds boxes on the same line).
            const tops = e => new Set([...e.getClientRects()].map(box => Math.round(box.top))).size;
            const lines = cell => Math.max(1, ...[...cell.querySelectorAll('a, span')].map(tops));
            return {right: last.right, width: window.innerWidth,
                    wrapped: ids.filter(cell => lines(cell) > 1).map(cell => cell.textContent),
                    styles: [...new Set(ids.map(style))]};
        }"""
    )
    assert placement["right"] <= placement["width"], placement
    assert placement["wrapped"] == [] and placement["styles"] == ["nowrap/ellipsis"], placement


def test_lists_and_a_conversions_page_fit_1400px_with_hostile_data(tmp_path, postgres_env, browser):
    env = {key: value for key, value in postgres_env.items() if key != "_PREFIX"}
    for command in (["collectstatic", "--noinput"], ["shell", "-c", CREATE_USERS]):
        done = manage(env, *command)
        assert done.returncode == 0, done.stderr
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with running_server(env, tmp_path / "server.log", workers=1) as base:
        post_conversions(base)
        post_hostile(base)
        page = browser.new_context(viewport={"width": WIDTH, "height": 900}).new_page()
        log_in(page, base, "analyst")

        # --- the list: originals only, every column in the window ------------------------------
        page.goto(base + LIST)
        expect(page.locator("#rows-toggle a.selected")).to_have_text("Originals")
        expect(page.locator("#result_list tbody tr")).to_have_count(7)  # 4 + 3 originals; no duplicate, no invalid
        expect(page.locator("#result_list thead")).to_contain_text("Received (UTC)")
        assert_fits(page)
        assert_row_fits(page)
        big = page.locator("#result_list tbody tr", has_text="ZSG-0")
        expect(big.locator("td.field-sale_label")).to_have_text("1,234,567.89")
        expect(big.locator("td.field-converted_at")).to_have_text("2025-01-10 20:13:05")
        expect(big.locator("td.field-sub_id_label span")).to_have_attribute("title", SUB_ID + "0")
        assert big.locator("td.field-sale_label").evaluate("cell => getComputedStyle(cell).textAlign") == "right"
        assert page.locator("input[name=received_at__range_from]").get_attribute("type") == "text"
        page.screenshot(path=str(SCREENSHOTS / "conversions_list.png"), full_page=True)

        # --- the toggle: the invalid view with its errors, and every row ----------------------------
        page.locator("#rows-toggle a", has_text="Invalid").click()
        page.wait_for_url("**rows=invalid**")
        expect(page.locator("#result_list tbody tr")).to_have_count(3)  # post_conversions' and these two
        error = page.locator("td.field-error_label span").first
        expect(error).to_contain_text("usd_sale_amount")
        assert "partner=involve_asia" in page.url
        assert_fits(page)
        assert_row_fits(page)
        page.locator("#rows-toggle a", has_text="All rows").click()
        page.wait_for_url("**rows=all**")
        expect(page.locator("#result_list tbody tr")).to_have_count(11)
        assert_fits(page)
        assert_row_fits(page)

        # --- a date filter typed as an ISO day; a wrong one is a 400 that says why -----------------
        page.fill("input[name=conversion_datetime__range_from]", "2025-01-11")
        page.press("input[name=conversion_datetime__range_from]", "Enter")
        page.wait_for_url("**conversion_datetime__range_from=2025-01-11**")
        expect(page.locator("#result_list tbody tr")).to_have_count(6)  # Jan 11 on: 3 + 1 + the Jan 13, 14, 15 rows
        assert page.goto(base + LIST + "&received_at__range_to=06/12/2026").status == 400
        expect(page.locator("#filter-error")).to_contain_text("is not a date (YYYY-MM-DD)")

        # --- a conversion's page, and an invalid one's, whose error comes first --------------------
        page.goto(base + LIST + "&rows=invalid")
        page.locator("#result_list tbody th a").first.click()
        expect(page.locator("#processing-error")).to_contain_text("Invalid postback:")
        box = page.locator("#processing-error").bounding_box()
        assert box["y"] + box["height"] < 900, box  # above the fold
        expect(page.locator(".field-received_at_iso .readonly")).to_have_text(ISO_MOMENT)
        assert_fits(page)
        page.goto(base + LIST)
        page.locator("#result_list tbody tr", has_text="ZSG-0").locator("th a").click()
        expect(page.locator(".field-conversion_datetime_iso .readonly")).to_have_text("2025-01-10 20:13:05 UTC")
        expect(page.locator("#content-main")).to_contain_text(OFFER)
        assert page.locator("#processing-error").count() == 0
        assert_fits(page)

        # --- the search in every partner, with the same ids ----------------------------------------
        page.goto(f"{base}/admin/partners/partner/search/?q={CLICK_ID}0")
        expect(page.locator("#search-results tbody tr")).to_have_count(1)
        expect(page.locator("#search-results tbody tr td").last).to_have_text(ISO_MOMENT)
        assert_fits(page)
        assert page.evaluate("document.querySelector('#search-results').scrollWidth") <= WIDTH
