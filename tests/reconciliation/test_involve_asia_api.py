"""The InvolveAsia API source against a local fake: pages, 429, timeouts, auth, rate limit."""

import datetime
import logging
from urllib.parse import parse_qsl

import pytest
from django.test import override_settings

from reconciliation.models import ReconciliationRow, ReportSource
from reconciliation.sources import involve_asia_rows
from tests.conftest import fixture_queries, partner_rows
from tests.reconciliation.fake_involve_asia import FakeInvolveAsia

KEY, SECRET = "ia-key-7f3a9c", "ia-secret-5be81d0c"
BASE = dict(parse_qsl(fixture_queries("involve_asia", "lifecycle_approve")[0]))
RECORDS = [{**BASE, "conversion_id": f"IA-{n}"} for n in range(1, 8)]  # 7 records: pages of 3, 3, 1
DAY = datetime.date(2025, 3, 1)
pytestmark = [
    pytest.mark.parametrize("backend", ["postgres"]),
    pytest.mark.usefixtures("fast_backoff"),
]


@pytest.fixture
def fast_backoff():
    with override_settings(RECONCILE_BACKOFF_SECONDS=0.01):
        yield


@pytest.fixture
def fake():
    server = FakeInvolveAsia(RECORDS, key=KEY, secret=SECRET)
    yield server
    server.stop()


def api_source(partner, fake, **fields):
    values = {
        "partner": partner,
        "name": "InvolveAsia API",
        "kind": "involve_asia",
        "base_url": fake.base_url,
        "api_key": KEY,
        "api_secret": SECRET,
        "page_size": 3,
        "requests_per_minute": 6000,
        "timeout_seconds": 0.3,
        **fields,
    }
    return ReportSource.objects.create(**values)


def test_three_pages_one_429_one_timeout_every_record_fetched_once(involve, fake):
    from reconciliation.services import reconciliation_run

    fake.faults = {2: "429", 3: "timeout"}
    source = api_source(involve, fake, preferred_currency="USD")

    run = reconciliation_run(source=source, date_from=DAY, date_to=DAY)

    assert (run.state, run.error, run.report_rows) == ("done", "", 7)
    assert fake.pages_requested() == [1, 2, 2, 3, 3]
    assert sorted(fake.served) == sorted(r["conversion_id"] for r in RECORDS)  # each page answered once
    rows = ReconciliationRow.objects.using(involve.database_alias).filter(run_id=run.pk)
    assert sorted(rows.values_list("conversion_id", flat=True)) == sorted(r["conversion_id"] for r in RECORDS)
    assert run.counts["missing_here"] == 7
    ranges = [form for path, form in fake.requests if path == "/api/conversions/range"]
    assert {(f["start_date"], f["end_date"], f["limit"], f["filters[preferred_currency]"]) for f in ranges} == {
        ("2025-03-01", "2025-03-01", "3", "USD")
    }


def test_an_authentication_failure_is_a_clear_error_on_the_run_and_nothing_is_imported(involve, fake, caplog):
    from reconciliation.services import reconciliation_run

    source = api_source(involve, fake, api_secret="wrong-secret-91ac")
    caplog.set_level(logging.DEBUG)

    run = reconciliation_run(source=source, date_from=DAY, date_to=DAY)

    assert run.state == "failed"
    assert run.error == "authentication failed: HTTP 401: Invalid key or secret"
    assert not ReconciliationRow.objects.using(involve.database_alias).filter(run_id=run.pk).exists()
    assert not partner_rows(involve).exists()
    assert fake.pages_requested() == []
    # The credentials are never logged.
    assert "wrong-secret-91ac" not in caplog.text and KEY not in caplog.text


def test_a_network_that_keeps_answering_429_fails_the_run_after_its_attempts(involve, fake):
    from reconciliation.services import reconciliation_run

    fake.faults = {1: "429 always"}
    source = api_source(involve, fake)
    with override_settings(RECONCILE_MAX_ATTEMPTS=3):
        run = reconciliation_run(source=source, date_from=DAY, date_to=DAY)

    assert run.state == "failed"
    assert run.error == "/conversions/range: HTTP 429 on each of 3 attempts; try again later"
    assert fake.pages_requested() == [1, 1, 1]


def test_requests_never_exceed_the_sources_rate(involve, fake):
    source = api_source(involve, fake, page_size=1, requests_per_minute=1200)

    records = list(involve_asia_rows(source=source, date_from=DAY, date_to=DAY))

    assert [record.values["conversion_id"] for record in records] == [r["conversion_id"] for r in RECORDS]
    # Authenticate + 7 pages at 20 requests per second: 8 requests take at least 7/20 s.
    assert len(fake.arrivals) == 8
    assert fake.arrivals[-1] - fake.arrivals[0] >= 7 / 20 - 0.02


def test_a_record_the_database_cannot_store_fails_the_run_clearly(involve):
    from reconciliation.services import reconciliation_run

    server = FakeInvolveAsia([{**RECORDS[0], "note": "a\x00b"}], key=KEY, secret=SECRET)
    try:
        run = reconciliation_run(source=api_source(involve, server), date_from=DAY, date_to=DAY)
    finally:
        server.stop()
    assert run.state == "failed"
    assert run.error.startswith("the report has a value that cannot be stored:")
    assert not ReconciliationRow.objects.using(involve.database_alias).filter(run_id=run.pk).exists()
