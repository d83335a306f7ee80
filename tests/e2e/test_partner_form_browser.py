"""A partner's secret and its test postback in a real browser (Playwright driving Debian's
Chromium) against a real gunicorn: an account manager generates the secret of a partner
that has none, copies it, and opens the test postback, prefilled in the partner's own
parameter names and saying what a postback without the secret gets. 1400 px wide, no
horizontal scrolling."""

import pytest
from playwright.sync_api import expect

from tests.e2e.server import fetch, manage, running_server
from tests.e2e.test_admin_browser import CREATE_USERS, SCREENSHOTS, WIDTH, assert_fits, log_in

pytestmark = pytest.mark.e2e


def test_an_account_manager_generates_copies_and_tests_with_a_partners_secret(tmp_path, postgres_env, browser):
    env = {key: value for key, value in postgres_env.items() if key != "_PREFIX"}
    for command in (["collectstatic", "--noinput"], ["shell", "-c", CREATE_USERS]):
        done = manage(env, *command)
        assert done.returncode == 0, done.stderr
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with running_server(env, tmp_path / "server.log", workers=1) as base:
        context = browser.new_context(viewport={"width": WIDTH, "height": 900})
        context.grant_permissions(["clipboard-read", "clipboard-write"], origin=base)
        page = context.new_page()
        log_in(page, base, "manager")
        page.goto(f"{base}/admin/partners/partner/")
        page.locator("#result_list a", has_text="involve_asia").click()
        change_url = page.url

        # No secret yet: the button says Generate, and the page has nothing to remove.
        expect(page.locator("#secret-action")).to_have_text("Generate…")
        page.click("#secret-action")
        expect(page.locator("button", has_text="Remove the secret")).to_have_count(0)
        page.click("button[value=rotate]")
        secret = page.locator("#new-secret").inner_text().strip()
        assert len(secret) >= 32
        page.click("#copy-secret")
        expect(page.locator("#copy-status")).to_have_text("Copied to the clipboard.")
        expect(page.locator("#copy-secret")).to_have_text("Copied ✓")
        assert page.evaluate("navigator.clipboard.readText()") == secret
        assert_fits(page)
        page.screenshot(path=str(SCREENSHOTS / "partner_secret.png"), full_page=True)

        # Shown once: the partner's page has the other button now, and not the secret.
        page.goto(change_url)
        expect(page.locator("#secret-action")).to_have_text("Rotate or remove…")
        assert secret not in page.content()

        # What the network gets, without the secret and with it.
        postback = f"{base}/partner/involve/event?conversion_id=BR-1&aff_sub=s1"
        status, body = fetch(postback)
        assert (status, body["reason"]) == (403, "token_missing"), body
        assert fetch(f"{postback}&token={secret}")[0] == 200

        # The test postback: InvolveAsia's own names, and the 403 a postback without the secret gets.
        page.locator(".object-tools a", has_text="Test postback").click()
        box = page.locator("#test-postback-form textarea")
        assert "aff_sub=sub-1" in box.input_value() and "usd_payout=2.50" in box.input_value()
        expect(page.locator('#test-postback-parameters tr[data-parameter-of="sub_id"]')).to_contain_text("aff_sub")
        expect(page.locator("#guard-secret")).to_contain_text("Without it the network gets HTTP 403 token_missing")
        assert secret not in page.content()
        assert_fits(page)
        page.click("#test-postback-form input[type=submit]")
        expect(page.locator("#dry-run-outcome")).to_be_visible()
        assert_fits(page)
        page.screenshot(path=str(SCREENSHOTS / "test_postback.png"), full_page=True)
