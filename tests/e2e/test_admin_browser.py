"""The admin in a real browser (Playwright driving Debian's Chromium) against a real gunicorn.

An account manager adds a partner through the mapping table and copies its postback
URL; the partner's server calls it; an analyst finds that conversion and exports it.
The screenshots in the README are taken here, so they stay true.
"""

import csv
import io
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest
from playwright.sync_api import Page, expect, sync_playwright
from psycopg import sql

from tests.conftest import POSTGRES_SERVER
from tests.e2e.server import PROJECT_DIR, fetch, manage, running_server, service_env

pytestmark = pytest.mark.e2e

# The README's screenshots: written to a temporary folder, and over docs/screenshots/
# only when asked (SCREENSHOTS_UPDATE=1), so a test run never changes tracked files.
SCREENSHOTS = (
    PROJECT_DIR / "docs" / "screenshots"
    if os.environ.get("SCREENSHOTS_UPDATE") == "1"
    else Path(tempfile.mkdtemp(prefix="postback-screenshots-"))
)
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
CREATE_USERS = """
from django.contrib.auth.models import Group, User
for username, group in (("manager", "Account managers"), ("analyst", "Analysts")):
    user = User.objects.create_user(username, password="pw-" + username + "-1234", is_staff=True)
    user.groups.add(Group.objects.get(name=group))
print("users created")
"""


@pytest.fixture
def postgres_prefix():
    prefix = f"test_pb_browser_{uuid.uuid4().hex[:8]}_"
    yield prefix
    with psycopg.connect(**POSTGRES_SERVER, autocommit=True) as conn:
        rows = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", [prefix + "%"]).fetchall()
        for (name,) in rows:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


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


@pytest.fixture
def browser():
    executable = shutil.which("chromium") or "/usr/bin/chromium"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def log_in(page: Page, base: str, username: str) -> None:
    page.goto(f"{base}/admin/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", f"pw-{username}-1234")
    page.click("input[type=submit]")
    expect(page.locator("#user-tools")).to_contain_text(username)


def test_account_manager_adds_a_partner_and_analyst_exports_its_conversion(server, browser, tmp_path):
    base = server
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    # --- the account manager adds a partner through the mapping table ---------------
    manager = browser.new_page(viewport={"width": 1280, "height": 900})
    log_in(manager, base, "manager")
    manager.goto(f"{base}/admin/partners/partner/add/")
    manager.fill("#id_partner_code", "shopback")
    manager.fill("#id_partner_name", "ShopBack")
    manager.fill("#id_endpoint_path", "/shopback/postback")
    manager.fill("#id_database_name", "shopback_db")
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
    expect(manager.locator(".messagelist")).to_contain_text("Database shopback_db")

    postback_url = manager.locator("#postback-url").inner_text().strip()
    assert postback_url == (
        f"{base}/partner/shopback/postback?conversion_id={{txn_id}}&conversion_datetime={{event_time}}"
        "&usd_earning={commission}&sub_id={aff_click}"
    )
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
    analyst = browser.new_context(viewport={"width": 1600, "height": 900}, accept_downloads=True).new_page()
    log_in(analyst, base, "analyst")
    analyst.goto(f"{base}/admin/conversions/partnerconversion/")
    analyst.select_option("#partner-select", "shopback")
    analyst.wait_for_url("**partner=shopback**")
    expect(analyst.locator("h1")).to_have_text("Conversions of ShopBack")
    expect(analyst.locator("#result_list tbody tr")).to_have_count(2)
    analyst.click("#toggle-nav-sidebar")  # room for every column in the screenshot
    analyst.screenshot(path=str(SCREENSHOTS / "conversions_list.png"), full_page=True)

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
