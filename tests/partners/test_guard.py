"""Bulkheads and breakers: a sick database holds a bounded share of the threads."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connections

from infra.databases.breaker import DatabaseGuard, PartnerDatabaseUnavailable
from tests.e2e.server import HangingDatabase


@pytest.fixture
def guard(settings) -> DatabaseGuard:
    settings.DB_MAX_THREADS_PER_DATABASE = 2
    settings.DB_BUSY_WAIT_SECONDS = 0.3
    settings.DB_BREAKER_SECONDS = 0.5
    return DatabaseGuard()


def test_beyond_its_share_a_request_waits_for_a_database_that_answers(guard):
    first, second = guard.admit("db"), guard.admit("db")
    threading.Timer(0.05, guard.release, args=(first,)).start()
    started = time.monotonic()
    third = guard.admit("db")  # waited for the slot the first one gave back
    assert time.monotonic() - started < 0.25
    guard.release(second)
    guard.release(third)


def test_a_database_that_stopped_answering_gets_no_more_threads(guard):
    held = [guard.admit("db"), guard.admit("db")]
    started = time.monotonic()
    with pytest.raises(PartnerDatabaseUnavailable, match="busy: 2 requests of this process are waiting on it"):
        guard.admit("db")
    assert time.monotonic() - started < 0.4
    time.sleep(0.3)
    started = time.monotonic()
    with pytest.raises(PartnerDatabaseUnavailable):
        guard.admit("db")  # the held ones are older than the wait: refused at once
    assert time.monotonic() - started < 0.05
    for ticket in held:
        guard.release(ticket)


def test_after_a_failure_one_probe_goes_through_and_its_success_closes_the_breaker(guard):
    guard.release(guard.admit("db"), failure="connection refused")
    with pytest.raises(PartnerDatabaseUnavailable, match="failing, not retried for a few seconds: connection refused"):
        guard.admit("db")
    time.sleep(0.55)
    probe = guard.admit("db")
    with pytest.raises(PartnerDatabaseUnavailable):
        guard.admit("db")  # only the probe while it is out
    guard.release(probe)
    guard.release(guard.admit("db"))
    assert not guard.is_open


def test_a_failed_probe_opens_the_breaker_again(guard):
    guard.release(guard.admit("db"), failure="timeout")
    time.sleep(0.55)
    guard.release(guard.admit("db"), failure="timeout again")
    with pytest.raises(PartnerDatabaseUnavailable, match="timeout again"):
        guard.admit("db")


def test_a_probe_that_never_reached_the_database_decides_nothing(guard):
    guard.release(guard.admit("db"), failure="connection refused")
    time.sleep(0.55)
    guard.release(guard.admit("db"), concluded=False)  # e.g. `default` failed first
    assert guard.is_open
    probe = guard.admit("db")  # a real probe may go through again at once
    guard.release(probe)
    assert not guard.is_open


@pytest.fixture
def backend():
    return "postgres"


def test_a_hanging_database_holds_at_most_its_share_of_threads(make_partner, settings, client):
    """Eight concurrent postbacks to a database that never answers: two wait for it (the
    share), the other six are refused within DB_BUSY_WAIT_SECONDS, and the next ones at
    once; another partner is served meanwhile."""
    from django.test import Client

    from partners.models import Partner

    settings.DB_MAX_THREADS_PER_DATABASE = 2
    settings.DB_BUSY_WAIT_SECONDS = 0.3
    hanging = HangingDatabase()
    make_partner("involve_asia")
    stuck = make_partner("stuck_ok")
    Partner.objects.filter(pk=stuck.pk).update(database_url=f"postgres://root@127.0.0.1:{hanging.port}/stuck")
    from partners.selectors import partner_directory

    partner_directory.clear()

    def post(index: int) -> tuple[int, float]:
        started = time.monotonic()
        try:
            status = Client().get(f"/partner/stuck_ok/event?conversion_id=h{index}").status_code
        finally:
            connections.close_all()
        return status, time.monotonic() - started

    try:
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(post, range(8)))
            # while two threads wait on the stuck database, the other partner is served
            assert client.get("/partner/involve/event?conversion_id=fine").status_code == 200
    finally:
        hanging.close()
    print(results)
    assert [status for status, _ in results] == [503] * 8
    waited_for_connect = sorted(seconds for _, seconds in results)[-2:]
    refused = sorted(seconds for _, seconds in results)[:6]
    assert all(seconds >= 4 for seconds in waited_for_connect)  # DB_CONNECT_TIMEOUT (5 s)
    # refused without waiting on the hanging connect (a busy machine took 1.3 s for that, not 5)
    assert all(seconds < 3 for seconds in refused)
