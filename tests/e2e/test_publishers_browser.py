"""A publisher's page in a real browser (Playwright driving Debian's Chromium) against a real
gunicorn, with hostile data: a long name, a long URL template and regular expression. It fits
1400 px, the template is read whole, only networks with conversions are listed; an analyst is
offered no action on the publisher list. Takes docs/screenshots/publisher.png."""

import pytest
from playwright.sync_api import expect

from tests.e2e.server import fetch, manage, running_server
from tests.e2e.test_admin_browser import CREATE_USERS, SCREENSHOTS, WIDTH, assert_fits, log_in

pytestmark = pytest.mark.e2e

LONG_TEMPLATE = (
    "https://postbacks.rampup-performance-network.example/v2/conversions/receive?"
    + "&".join(
        f"{name}={{{name}}}"
        for name in (
            "conversion_id",
            "click_id",
            "sub_id",
            "media_id",
            "offer_id",
            "offer_name",
            "status",
            "event",
            "payout",
            "sale_amount",
            "earning",
            "currency",
            "sale_amount_local",
            "conversion_datetime",
            "partner_code",
            "publisher_code",
            "idempotency_key",
        )
    )
    + "&source=agency_forwarding_service_with_a_rather_long_tracking_parameter_value_0123456789abcdef"
)
CREATE_PUBLISHER = f"""
from partners.models import Partner
from publishers.models import Publisher
publisher = Publisher.objects.create(
    code="rampup",
    name="RAMPUP" + "-PerformanceMediaBuyersSoutheastAsia" * 4,
    match_regex="^(RAMPUP|RPID|" + "|".join(f"OEM{{n}}" for n in range(40)) + ").*",
    url_template={LONG_TEMPLATE!r},
    events=["recorded", "approved"],
)
publisher.partners.set(Partner.objects.filter(partner_code__in=["involve_asia", "rector"]))
print("publisher", publisher.pk)
"""


def test_a_publishers_page_fits_and_an_analyst_is_offered_no_action(tmp_path, postgres_env, browser):
    env = {key: value for key, value in postgres_env.items() if key != "_PREFIX"}
    for command in (["collectstatic", "--noinput"], ["shell", "-c", CREATE_USERS], ["shell", "-c", CREATE_PUBLISHER]):
        done = manage(env, *command)
        assert done.returncode == 0, done.stderr
    publisher_id = done.stdout.split()[-1]
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with running_server(env, tmp_path / "server.log", workers=1) as base:
        for conversion_id, sub_id in (("IA-1", "RAMPUP-17"), ("IA-2", "OPPO-2"), ("IA-3", "OEM7-x")):
            status, body = fetch(
                f"{base}/partner/involve/event?conversion_id={conversion_id}&aff_sub={sub_id}"
                "&usd_sale_amount=93.47&offer_name=Shopee%20ID%20(Media%20Buyers)%20-%20CPS"
            )
            assert status == 200, body

        manager = browser.new_context(viewport={"width": WIDTH, "height": 900}).new_page()
        log_in(manager, base, "manager")
        manager.goto(f"{base}/admin/publishers/publisher/{publisher_id}/change/")
        template = manager.locator("textarea#id_url_template")
        expect(template).to_have_value(LONG_TEMPLATE)
        # The whole template is readable: as wide as its row allows, wrapped, no scrolling inside it.
        box = template.bounding_box()
        assert box["width"] > 700, box
        assert template.evaluate("box => box.scrollWidth <= box.clientWidth"), "the template box scrolls sideways"
        matches = manager.locator(".field-recent_matches .readonly")
        expect(matches).to_contain_text("involve_asia: 2 of 3 match")
        expect(matches).not_to_contain_text("rector")  # no conversion there: not listed
        assert_fits(manager)
        manager.screenshot(path=str(SCREENSHOTS / "publisher.png"), full_page=True)

        manager.goto(f"{base}/admin/publishers/publisher/")
        expect(manager.locator('select[name="action"] option[value="pause"]')).to_have_count(1)

        analyst = browser.new_context(viewport={"width": WIDTH, "height": 900}).new_page()
        log_in(analyst, base, "analyst")
        analyst.goto(f"{base}/admin/publishers/publisher/")
        expect(analyst.locator("#result_list")).to_contain_text("rampup")
        expect(analyst.locator('select[name="action"]')).to_have_count(0)
        assert_fits(analyst)
