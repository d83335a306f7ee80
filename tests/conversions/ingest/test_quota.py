"""The daily quota: shared counter (partner database or Redis), 429 until the partner's midnight."""

import logging
import uuid
from datetime import UTC, datetime

import pytest
import redis
from django.db import connections
from django.test.utils import CaptureQueriesContext

from conversions.ingest.quota import next_local_midnight, partner_quota_consume
from conversions.ingest.refusals import refusal_counts
from tests.conftest import partner_rows, run_concurrently
from tests.e2e.server import HangingDatabase

URL = "/partner/rector/event"
REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture(params=["database", "redis"])
def counter_store(request, settings):
    """Run the test with the counter in the partner database, then in Redis."""
    if request.param == "redis":
        settings.REDIS_URL = REDIS_URL
        settings.REDIS_KEY_PREFIX = f"test-{uuid.uuid4().hex[:8]}"
        yield "redis"
        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(f"{settings.REDIS_KEY_PREFIX}:*"):
            client.delete(key)
    else:
        settings.REDIS_URL = ""
        yield "database"


def quota_errors(caplog):
    return [r for r in caplog.records if "daily quota exceeded" in r.getMessage() and r.levelno == logging.ERROR]


def test_over_quota_is_429_until_local_midnight_and_logged_once(client, make_partner, counter_store, caplog):
    partner = make_partner("rector", max_daily_requests=3)
    with caplog.at_level(logging.INFO):
        statuses = [client.get(f"{URL}?conversion_id=q{i % 2}").status_code for i in range(3)]
        over = [client.get(f"{URL}?conversion_id=late{i}") for i in range(3)]
    assert statuses == [200, 200, 200]  # duplicates count too: every request is a request
    for response in over:
        assert response.status_code == 429
        body = response.json()
        assert body["status"] == "error" and body["reason"] == "quota_exceeded"
        assert "3 postbacks" in body["message"]
        assert 0 < int(response["Retry-After"]) <= 86400
    assert partner_rows(partner).count() == 3  # nothing stored over quota
    assert len(quota_errors(caplog)) == 1
    assert "partner=rector limit=3" in quota_errors(caplog)[0].getMessage()
    counts = {row.reason: row.count for row in refusal_counts(partner=partner)}
    assert counts == {"quota_exceeded": 3}


def test_retry_after_runs_to_the_partners_own_midnight(make_partner):
    partner = make_partner("rector", max_daily_requests=1, timezone="Asia/Singapore")
    # 15:30 UTC is 23:30 in Singapore: half an hour to its midnight
    late = datetime(2026, 11, 26, 15, 30, tzinfo=UTC)
    assert partner_quota_consume(partner=partner, now=late) is None
    rejection = partner_quota_consume(partner=partner, now=late)
    assert rejection is not None and rejection.retry_after == 1800 and rejection.http_status == 429
    # 16:00 UTC is a new day in Singapore: a fresh quota
    assert partner_quota_consume(partner=partner, now=datetime(2026, 11, 26, 16, 0, tzinfo=UTC)) is None


def test_next_midnight_across_a_daylight_saving_change():
    from zoneinfo import ZoneInfo

    new_york = ZoneInfo("America/New_York")
    # 2026-03-08 is 23 hours long in New York: noon EDT -> midnight is 12 hours later
    local = datetime(2026, 3, 8, 16, 0, tzinfo=UTC).astimezone(new_york)
    assert next_local_midnight(local) == datetime(2026, 3, 9, 4, 0, tzinfo=UTC)


def test_zero_means_no_limit(client, make_partner):
    make_partner("rector", max_daily_requests=0)
    assert {client.get(f"{URL}?conversion_id=z{i}").status_code for i in range(5)} == {200}


def test_refused_clients_do_not_use_up_the_quota(client, make_partner):
    make_partner("rector", max_daily_requests=2, postback_secret="r" * 20)
    for _ in range(5):
        assert client.get(f"{URL}?conversion_id=x").status_code == 403
    assert client.get(f"{URL}?conversion_id=x&token={'r' * 20}").status_code == 200


def test_concurrent_requests_never_exceed_the_quota(client, make_partner, counter_store):
    partner = make_partner("rector", max_daily_requests=10)
    results = run_concurrently(lambda i: partner_quota_consume(partner=partner), 24)
    assert not [r for r in results if isinstance(r, Exception)]
    assert sum(r is None for r in results) == 10
    assert sum(r is not None and r.reason == "quota_exceeded" for r in results) == 14


@pytest.mark.parametrize("counter_store", ["redis"], indirect=True)
def test_with_redis_the_hot_path_writes_only_the_conversion(client, make_partner, counter_store):
    partner = make_partner("rector")
    client.get(f"{URL}?conversion_id=warm")
    with CaptureQueriesContext(connections[partner.database_alias]) as partner_queries:
        assert client.get(f"{URL}?conversion_id=h1").status_code == 200
    assert len(partner_queries) == 1
    assert 'INSERT INTO "partner_conversions"' in partner_queries[0]["sql"]


def test_redis_down_falls_back_to_the_partner_database(client, make_partner, settings, caplog):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    partner = make_partner("rector", max_daily_requests=2)
    statuses = [client.get(f"{URL}?conversion_id=r{i}").status_code for i in range(3)]
    assert statuses == [200, 200, 429]
    assert partner_rows(partner).count() == 2
    assert "counting in the partner database" in caplog.text


def stored_count(partner) -> int:
    from conversions.models import DailyCounter

    row = DailyCounter.objects.using(partner.database_alias).filter(partner_id=partner.pk, name="requests").first()
    return row.count if row else 0


def test_far_from_the_limit_counts_are_added_in_batches(make_partner, settings, counter_store):
    settings.QUOTA_BATCH_SIZE = 5
    settings.QUOTA_FLUSH_SECONDS = 3600
    partner = make_partner("rector", max_daily_requests=10_000)
    for _ in range(12):
        assert partner_quota_consume(partner=partner) is None
    if counter_store == "database":
        assert stored_count(partner) == 10  # two batches of 5 added; 2 still counted locally
    for _ in range(3):
        partner_quota_consume(partner=partner)
    if counter_store == "database":
        assert stored_count(partner) == 15


def test_the_flush_interval_bounds_how_long_counts_stay_local(make_partner, settings):
    settings.REDIS_URL = ""
    settings.QUOTA_BATCH_SIZE = 1000
    settings.QUOTA_FLUSH_SECONDS = 0
    partner = make_partner("rector", max_daily_requests=1_000_000)
    partner_quota_consume(partner=partner)
    partner_quota_consume(partner=partner)
    assert stored_count(partner) == 2


def test_near_the_limit_every_postback_is_counted_exactly(make_partner, settings, counter_store):
    settings.QUOTA_BATCH_SIZE = 5
    settings.QUOTA_FLUSH_SECONDS = 3600
    # margin = max(limit // 10, 10 batches) = 50: batches up to 150, exact after
    partner = make_partner("rector", max_daily_requests=200)
    results = [partner_quota_consume(partner=partner) for _ in range(210)]
    assert sum(r is None for r in results) == 200
    assert [r.reason for r in results[200:]] == ["quota_exceeded"] * 10
    if counter_store == "database":
        assert stored_count(partner) == 210


def test_batched_counting_is_exact_under_concurrency(make_partner, settings):
    settings.REDIS_URL = ""
    settings.QUOTA_BATCH_SIZE = 4
    settings.QUOTA_FLUSH_SECONDS = 3600
    partner = make_partner("rector", max_daily_requests=100)
    results = run_concurrently(lambda i: partner_quota_consume(partner=partner), 40)
    results += run_concurrently(lambda i: partner_quota_consume(partner=partner), 80)
    assert not [r for r in results if isinstance(r, Exception)]
    assert sum(r is None for r in results) == 100


def test_a_hung_redis_costs_one_timeout_then_is_skipped_and_the_quota_stays_exact(make_partner, settings, caplog):
    import time

    from conversions.ingest.quota import redis_breaker

    hung = HangingDatabase()  # a Redis that accepts connections and never answers
    settings.REDIS_URL = f"redis://127.0.0.1:{hung.port}/0"
    settings.REDIS_TIMEOUT = 0.3
    settings.REDIS_BREAKER_SECONDS = 30
    partner = make_partner("rector", max_daily_requests=40)  # exact counting from the first postback
    try:
        timings = []
        results = []
        for _ in range(45):
            started = time.monotonic()
            results.append(partner_quota_consume(partner=partner))
            timings.append(time.monotonic() - started)
    finally:
        hung.close()
    # the first postback waited out REDIS_TIMEOUT; the others skipped Redis
    assert 0.25 < timings[0] < 1.0
    assert max(timings[1:]) < 0.1
    assert [r is None for r in results] == [True] * 40 + [False] * 5
    assert stored_count(partner) == 45
    assert caplog.text.count("Redis quota counter unavailable") == 1
    assert not redis_breaker.admit()


def test_after_its_pause_one_request_tries_redis_again_and_redis_continues_from_the_database_count(
    make_partner, settings
):
    import time

    from conversions.ingest.quota import quota_key, redis_breaker

    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens: refused at once
    settings.REDIS_BREAKER_SECONDS = 0.2
    partner = make_partner("rector", max_daily_requests=30)
    for _ in range(10):
        assert partner_quota_consume(partner=partner) is None
    assert stored_count(partner) == 10
    settings.REDIS_URL = REDIS_URL
    key = quota_key(partner, partner_local_day(partner))
    client = redis.Redis.from_url(REDIS_URL)
    client.delete(key)
    try:
        assert partner_quota_consume(partner=partner) is None  # still skipped: counted in the database
        time.sleep(0.25)
        for _ in range(19):
            assert partner_quota_consume(partner=partner) is None
        # Redis took over at the database's total: the day's 30 postbacks, then refusals
        assert int(client.get(key)) == 30
        assert partner_quota_consume(partner=partner).reason == "quota_exceeded"
        assert redis_breaker.admit()
    finally:
        client.delete(key)


def partner_local_day(partner):
    return partner.local_now().date()
