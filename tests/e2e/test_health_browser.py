"""The health page in a real browser (Playwright driving Debian's Chromium) against a real
gunicorn: an analyst logs in, follows the home page's first link to the health page and sees
each partner's traffic light and its last 48 hours drawn."""

import pytest
from playwright.sync_api import expect

from tests.e2e.server import manage, running_server
from tests.e2e.test_admin_browser import CREATE_USERS, WIDTH, log_in

pytestmark = pytest.mark.e2e

CHECK_INVOLVE_ASIA = """
import datetime
from django.utils import timezone
from health.models import Incident, PartnerHealth
from partners.models import Partner
now = timezone.now()
hour = now.replace(minute=0, second=0, microsecond=0)
partner = Partner.objects.get(partner_code="involve_asia")
PartnerHealth.objects.create(
    partner=partner,
    light="red",
    last_received_at=now - datetime.timedelta(hours=3),
    checked_at=now,
    signals={
        "last_hour": 0, "normal_hour": 40.0, "today": 310, "today_normal": 900.0,
        "invalid_share": 0.02, "refused": 0, "refused_share": 0.0, "storage_ok": True,
        "hourly_48h": [
            [(hour - datetime.timedelta(hours=47 - n)).isoformat(), 0 if n > 44 else 30 + n, n % 3]
            for n in range(48)
        ],
    },
)
Incident.objects.create(partner=partner, rule="silent", summary="No postback for 3 h (normally one every 4 min)")
print("checked")
"""


def test_an_analyst_follows_the_home_pages_link_to_the_health_page(tmp_path, postgres_env, browser):
    env = {key: value for key, value in postgres_env.items() if key != "_PREFIX"}
    for command in (["shell", "-c", CREATE_USERS], ["shell", "-c", CHECK_INVOLVE_ASIA]):
        done = manage(env, *command)
        assert done.returncode == 0, done.stderr
    with running_server(env, tmp_path / "server.log", workers=1) as base:
        page = browser.new_context(viewport={"width": WIDTH, "height": 900}).new_page()
        log_in(page, base, "analyst")

        page.goto(f"{base}/admin/")
        page.locator("#health-link a").first.click()

        expect(page.locator("h1")).to_have_text("Channel health")
        involve = page.locator('#health-table tr[data-partner="involve_asia"]')
        expect(involve.locator(".light-red")).to_have_text("red")
        expect(involve).to_contain_text("3 h ago")
        expect(involve).to_contain_text("310 / normal 900")
        expect(involve.locator("a", has_text="silent")).to_be_visible()
        chart = involve.locator("svg.health-chart")
        expect(chart).to_be_visible()
        assert chart.bounding_box()["width"] == 144
        assert chart.locator("path.received").get_attribute("d").count("M") == 45  # the three silent hours are empty
        # Red first; Rector, never checked, after it.
        expect(page.locator("#health-table tbody tr").first).to_have_attribute("data-partner", "involve_asia")
        expect(page.locator('#health-table tr[data-partner="rector"]')).to_contain_text("not checked yet")

        page.locator("a", has_text="silent").click()
        expect(page.locator("#content-main")).to_contain_text("No postback for 3 h")
