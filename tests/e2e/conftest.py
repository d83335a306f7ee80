"""Fixtures for tests that run real servers."""

import shutil
import uuid

import pytest
from playwright.sync_api import sync_playwright

from tests.conftest import THROUGH_PGBOUNCER, postgres_drop
from tests.e2e.server import manage, service_env


@pytest.fixture
def postgres_env(partner_server_port):
    """A fresh configuration database and partner databases on PostgreSQL (through
    PgBouncer in the TEST_THROUGH_PGBOUNCER pass), initialised by init_partners."""
    prefix = f"test_pb_scale_{uuid.uuid4().hex[:8]}_"
    env = service_env(
        DATABASE_URL=f"postgres://root@127.0.0.1:5432/{prefix}default",
        PARTNER_DATABASE_URL=f"postgres://root@127.0.0.1:{partner_server_port}/{prefix}{{name}}",
        PARTNER_DATABASE_TEMPLATE=f"{prefix}template",
    )
    if THROUGH_PGBOUNCER:
        env["DB_TRANSACTION_POOLER"] = "true"
    init = manage(env, "init_partners")
    assert init.returncode == 0, init.stderr
    env["_PREFIX"] = prefix
    yield env
    postgres_drop(prefix)


CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]


@pytest.fixture
def browser():
    """Debian's Chromium driven by Playwright (its own browser download is not used)."""
    executable = shutil.which("chromium") or "/usr/bin/chromium"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield browser
        browser.close()
