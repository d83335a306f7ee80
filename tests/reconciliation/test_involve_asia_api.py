"""The InvolveAsia API source against a local fake of the published API: pages, the
account's 60 requests a minute (in virtual time), 429s, timeouts, tokens, 401s."""

import datetime
import logging
import re
import threading

import pytest
from django.test import override_settings

from reconciliation import sources
from reconciliation.models import ReconciliationRow, ReportSource
from reconciliation.services import reconciliation_run
from reconciliation.sources import involve_asia_rows
from tests.conftest import partner_rows
from tests.reconciliation.fake_involve_asia import FakeInvolveAsia, VirtualClock, most_in_window, record

KEY, SECRET = "ia-key-7f3a9c", "ia-secret-5be81d0c"
RECORDS = [record(n) for n in range(1, 8)]  # 7 records: pages of 3, 3, 1
DAY = datetime.date(2025, 3, 1)
pytestmark = pytest.mark.parametrize("backend", ["postgres"])


@pytest.fixture
def clock(monkeypatch):
    """Virtual time for the client, its rate limit and the fake alike."""
    virtual = VirtualClock()
    monkeypatch.setattr(sources, "API_CLOCK", virtual)
    return virtual


@pytest.fixture
def fake(clock):
    server = FakeInvolveAsia(RECORDS, key=KEY, secret=SECRET, clock=clock)
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
        "timeout_seconds": 5.0,
        **fields,
    }
    return ReportSource.objects.create(**values)


def ids(records):
    return sorted(str(r["conversion_id"]) for r in records)


def run_rows(partner, run):
    return ReconciliationRow.objects.using(partner.database_alias).filter(run_id=run.pk)


def test_three_pages_one_429_one_timeout_every_record_fetched_once(involve, fake):
    fake.faults = {2: "429", 3: "timeout"}
    fake.delay = 1.0
    source = api_source(involve, fake, preferred_currency="USD", timeout_seconds=0.5)

    run = reconciliation_run(source=source, date_from=DAY, date_to=DAY)

    assert (run.state, run.error, run.report_rows) == ("done", "", 7)
    assert fake.pages_requested() == [1, 2, 2, 3, 3]
    assert sorted(fake.served) == sorted(r["conversion_id"] for r in RECORDS)  # each page answered once
    assert sorted(run_rows(involve, run).values_list("conversion_id", flat=True)) == ids(RECORDS)
    assert run.counts["missing_here"] == 7
    # The partner's day (UTC) is covered by two of the network's (GMT+8).
    ranges = [form for path, form in fake.requests if path == "/api/conversions/range"]
    assert {(f["start_date"], f["end_date"], f["limit"], f["filters[preferred_currency]"]) for f in ranges} == {
        ("2025-03-01", "2025-03-02", "3", "USD")
    }


def test_a_server_error_is_retried(involve, fake):
    fake.faults = {1: "500"}
    run = reconciliation_run(source=api_source(involve, fake), date_from=DAY, date_to=DAY)
    assert (run.state, run.report_rows) == ("done", 7)
    assert fake.pages_requested() == [1, 1, 2, 3]


def test_an_authentication_failure_is_a_clear_error_on_the_run_and_nothing_is_imported(involve, fake, caplog):
    source = api_source(involve, fake, api_secret="wrong-secret-91ac")
    caplog.set_level(logging.DEBUG)

    run = reconciliation_run(source=source, date_from=DAY, date_to=DAY)

    assert run.state == "failed"
    assert run.error == "authentication failed: HTTP 401: Invalid key or secret"
    assert not run_rows(involve, run).exists()
    assert not partner_rows(involve).exists()
    assert fake.pages_requested() == []
    # The credentials are never logged.
    assert "wrong-secret-91ac" not in caplog.text and KEY not in caplog.text


def test_ten_thousand_records_at_sixty_requests_a_minute_are_read_in_full(involve, clock):
    # 100 pages of the network's largest (100), whatever page size and rate the source has
    # stored: 101 requests at 60 a minute, in virtual time.
    records = [record(n, datetime_conversion=f"2025-03-01 {8 + n % 16:02d}:{n % 60:02d}:00") for n in range(10_000)]
    fake = FakeInvolveAsia(records, key=KEY, secret=SECRET, clock=clock)
    started = clock.now()
    try:
        source = api_source(involve, fake, page_size=1000, requests_per_minute=600)
        run = reconciliation_run(source=source, date_from=DAY, date_to=DAY)
    finally:
        fake.stop()

    assert (run.state, run.error, run.report_rows) == ("done", "", 10_000)
    assert run_rows(involve, run).count() == 10_000  # no record lost, none twice
    assert sorted(fake.served) == sorted(r["conversion_id"] for r in records)
    assert fake.pages_requested() == list(range(1, 101))
    assert {form["limit"] for path, form in fake.requests if path == "/api/conversions/range"} == {"100"}
    assert fake.refused == 0
    assert most_in_window(fake.arrivals) == 60
    assert clock.now() - started >= 60  # 101 requests cannot fit in one minute


def test_another_client_using_part_of_the_accounts_minute_costs_waits_not_records(involve, clock):
    records = [record(n) for n in range(3000)]
    fake = FakeInvolveAsia(records, key=KEY, secret=SECRET, clock=clock)
    fake.other_client = 40  # each minute, before us
    try:
        source = api_source(involve, fake, page_size=100)
        read = list(involve_asia_rows(source=source, date_from=DAY, date_to=DAY))
    finally:
        fake.stop()

    assert sorted(row.values["conversion_id"] for row in read) == sorted(r["conversion_id"] for r in records)
    assert fake.refused > 0  # the network said 429 ...
    assert sorted(set(fake.pages_requested())) == list(range(1, 31))
    assert most_in_window(fake.arrivals) <= 60  # ... though we never sent more than our minute's worth


def test_two_runs_of_one_account_in_two_threads_share_its_minute(involve, clock):
    records = [record(n) for n in range(2000)]
    fake = FakeInvolveAsia(records, key=KEY, secret=SECRET, clock=clock)
    results: dict[int, list] = {}
    try:
        first = api_source(involve, fake, page_size=50)
        second = api_source(involve, fake, page_size=50, name="InvolveAsia API again")

        def read(index, source):
            results[index] = list(involve_asia_rows(source=source, date_from=DAY, date_to=DAY))

        threads = [threading.Thread(target=read, args=(i, s)) for i, s in enumerate((first, second))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        fake.stop()

    expected = sorted(r["conversion_id"] for r in records)
    assert [sorted(row.values["conversion_id"] for row in results[i]) for i in (0, 1)] == [expected, expected]
    assert len(fake.arrivals) == 2 * (1 + 40)
    assert fake.refused == 0
    assert most_in_window(fake.arrivals) <= 60


def test_requests_never_exceed_the_sources_own_rate(involve, fake, clock):
    fake.records = [record(n) for n in range(45)]
    source = api_source(involve, fake, page_size=1, requests_per_minute=20)

    read = list(involve_asia_rows(source=source, date_from=DAY, date_to=DAY))

    assert len(read) == 45 and len(fake.arrivals) == 46
    assert most_in_window(fake.arrivals) == 20
    assert fake.arrivals[-1] - fake.arrivals[0] >= 120  # 46 requests at 20 a minute


def test_a_network_that_keeps_answering_429_is_given_up_on_only_after_a_full_minute(involve, fake, clock):
    fake.faults = {1: "429 always"}
    source = api_source(involve, fake)
    with override_settings(RECONCILE_MAX_ATTEMPTS=3):
        run = reconciliation_run(source=source, date_from=DAY, date_to=DAY)

    assert run.state == "failed"
    given_up = r"/conversions/range: HTTP 429 on each of (\d+) attempts over (\d+) s; try again later"
    found = re.fullmatch(given_up, run.error)
    assert found, run.error
    attempts, seconds = int(found[1]), int(found[2])
    assert attempts >= 3 and seconds >= 60
    assert fake.pages_requested() == [1] * attempts


def test_the_token_is_renewed_before_its_two_hours_are_up(involve, fake):
    fake.records = [record(n) for n in range(36)]  # 12 pages of 3 ...
    fake.page_seconds = 15 * 60  # ... 15 minutes each: three hours

    read = list(involve_asia_rows(source=api_source(involve, fake), date_from=DAY, date_to=DAY))

    assert len(read) == 36
    assert fake.authentications() == 2
    assert fake.unauthorized == 0  # never a request with an expired token


def test_a_token_refused_mid_run_is_renewed_once(involve, fake):
    fake.faults = {2: "401"}

    read = list(involve_asia_rows(source=api_source(involve, fake), date_from=DAY, date_to=DAY))

    assert len(read) == 7
    assert fake.pages_requested() == [1, 2, 2, 3]
    assert fake.authentications() == 2


@pytest.mark.parametrize(("fault", "message"), [("401", "Unauthenticated."), ("401 text", "Unauthorized.")])
def test_a_401_outside_the_envelope_is_a_clear_error(involve, fake, fault, message):
    fake.faults = {2: f"{fault} always"}

    run = reconciliation_run(source=api_source(involve, fake), date_from=DAY, date_to=DAY)

    assert (run.state, run.error) == ("failed", f"/conversions/range page 2: HTTP 401: {message}")
    assert fake.pages_requested() == [1, 2, 2]
    assert not run_rows(involve, run).exists()


def test_a_record_the_database_cannot_store_fails_the_run_clearly(involve, fake):
    fake.records = [record(1, note="a\x00b")]

    run = reconciliation_run(source=api_source(involve, fake), date_from=DAY, date_to=DAY)

    assert run.state == "failed"
    assert run.error.startswith("the report has a value that cannot be stored:")
    assert not run_rows(involve, run).exists()
