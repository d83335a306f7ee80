"""The audit of refused postbacks: counted per partner, local day and reason, visible to staff."""

import io
import logging
import time

import pytest
from django.core.management import call_command

from conversions.ingest.refusals import refusal_counts

URL = "/partner/involve/event"


def test_every_refusal_is_counted_by_reason(client, make_partner, settings):
    settings.POSTBACK_MAX_PARAMS = 5
    partner = make_partner("involve_asia", postback_secret="s" * 24, max_daily_requests=2, timezone="Asia/Singapore")
    token = "token=" + "s" * 24
    client.get(f"{URL}?conversion_id=a")  # 403 token_missing
    client.get(f"{URL}?conversion_id=a&token=nope")  # 403 token_invalid
    client.get(f"{URL}?conversion_id=a&token=nope")
    client.get(f"{URL}?{token}&" + "&".join(f"p{i}=1" for i in range(6)))  # 400 too_many_parameters
    client.get(f"{URL}?{token}&usd_payout=abc")  # 400 invalid_data (missing id, bad amount): stored as rejected
    client.get(f"{URL}?{token}&conversion_id=ok")  # 200
    client.get(f"{URL}?{token}&conversion_id=late")  # 429

    counts = {row.reason: (row.http_status, row.count) for row in refusal_counts(partner=partner)}
    assert counts == {
        "token_missing": (403, 1),
        "token_invalid": (403, 2),
        "too_many_parameters": (400, 1),
        "invalid_data": (400, 1),
        "quota_exceeded": (429, 1),
    }

    out = io.StringIO()
    call_command("postback_rejections", "--partner", "involve_asia", stdout=out)
    lines = out.getvalue().splitlines()
    assert len(lines) == 5
    assert any("403  token_invalid" in line and line.split()[4] == "2" for line in lines), lines


def test_command_says_when_nothing_was_refused(make_partner):
    make_partner("rector")
    out = io.StringIO()
    call_command("postback_rejections", stdout=out)
    assert out.getvalue().strip() == "rector: no rejected postbacks"


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def log_lines():
    """WARNING and above of our ingest logger and of Django's request logger, as (logger, message)."""
    handler = _Records()
    loggers = [logging.getLogger(name) for name in ("conversions.ingest", "django.request")]
    for logger in loggers:
        logger.addHandler(handler)
    yield lambda: [(r.name, r.getMessage()) for r in handler.records if r.levelno >= logging.WARNING]
    for logger in loggers:
        logger.removeHandler(handler)


def test_a_refused_or_rejected_postback_is_one_warning_line_not_two(client, make_partner, log_lines):
    make_partner("involve_asia", postback_secret="s" * 24, max_daily_requests=1)
    token = "token=" + "s" * 24
    client.get(f"{URL}?conversion_id=a&token=nope")  # 403 token_invalid
    client.get(f"{URL}?{token}&conversion_id=b&usd_payout=abc")  # 400 invalid_data, stored as rejected
    client.get(f"{URL}?{token}&conversion_id=c")  # 429: logged once a day by the quota, not per postback
    client.get(f"{URL}?{token}&conversion_id=d")  # 429 again

    lines = log_lines()
    assert [name for name, _ in lines if name == "django.request"] == [], lines
    ours = [message for name, message in lines if name == "conversions.ingest"]
    assert len(ours) == 2, ours
    assert "reason=token_invalid status=403" in ours[0]
    assert "reason=invalid_data status=400" in ours[1]
    assert "conversion_id=b fields=usd_earning" in ours[1]


def _stored_counts(partner) -> dict[str, int]:
    from conversions.models import DailyCounter

    rows = DailyCounter.objects.using(partner.database_alias).filter(name__startswith="rejected:")
    return {row.name.removeprefix("rejected:"): row.count for row in rows}


def test_refusals_are_counted_in_batches_not_one_write_each(client, make_partner, settings):
    settings.REFUSAL_FLUSH_SECONDS = 60
    partner = make_partner("involve_asia", postback_secret="s" * 24)
    for n in range(20):
        assert client.get(f"{URL}?conversion_id=r{n}&token=nope").status_code == 403
    assert _stored_counts(partner) == {}  # nothing written by the refused postbacks themselves

    # This process's pending counts are added before it reads them.
    assert {row.reason: row.count for row in refusal_counts(partner=partner)} == {"token_invalid": 20}
    assert _stored_counts(partner) == {"token_invalid": 20}

    # And by its own thread within REFUSAL_FLUSH_SECONDS, with nobody reading.
    settings.REFUSAL_FLUSH_SECONDS = 0.2
    for n in range(5):
        client.get(f"{URL}?conversion_id=s{n}&token=nope")
    deadline = time.monotonic() + 10
    while _stored_counts(partner) != {"token_invalid": 25} and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _stored_counts(partner) == {"token_invalid": 25}


def test_counts_wait_for_a_partner_database_that_is_away(client, make_partner, settings, monkeypatch):
    from conversions.ingest import refusals
    from infra.databases import PartnerDatabaseUnavailable

    settings.REFUSAL_FLUSH_SECONDS = 60
    partner = make_partner("involve_asia", postback_secret="s" * 24)
    for n in range(3):
        client.get(f"{URL}?conversion_id=r{n}&token=nope")
    real = refusals.daily_counter_increment

    def away(**kwargs):
        raise PartnerDatabaseUnavailable(partner.database_alias, "connection refused")

    monkeypatch.setattr(refusals, "daily_counter_increment", away)
    refusals.refusal_ledger.flush()  # fails: the counts stay pending
    client.get(f"{URL}?conversion_id=r9&token=nope")
    monkeypatch.setattr(refusals, "daily_counter_increment", real)
    assert _stored_counts(partner) == {}
    refusals.refusal_ledger.flush()
    assert _stored_counts(partner) == {"token_invalid": 4}


def _ledger(monkeypatch):
    from conversions.ingest import refusals

    ledger = refusals.RefusalLedger()
    monkeypatch.setattr(refusals, "refusal_ledger", ledger)
    return ledger


def test_the_last_refusal_time_never_goes_back_when_processes_flush_out_of_order(make_partner, settings):
    import datetime

    from django.utils import timezone

    from conversions.ingest.refusals import RefusalLedger

    settings.REFUSAL_FLUSH_SECONDS = 60
    partner = make_partner("involve_asia", postback_secret="s" * 24)
    worker_a, worker_b = RefusalLedger(), RefusalLedger()  # two processes' ledgers
    now = timezone.now()
    day = partner.local_now(now).date()
    worker_b.add(partner=partner, day=day, reason="token_invalid", now=now - datetime.timedelta(seconds=0.9))
    worker_a.add(partner=partner, day=day, reason="token_invalid", now=now)
    worker_a.flush()
    worker_b.flush()  # the older batch lands last
    [row] = refusal_counts(partner=partner)
    assert (row.count, row.last_at) == (2, now)


def test_counted_at_once_a_count_that_could_not_be_written_is_retried(client, make_partner, settings, monkeypatch):
    from conversions.ingest import refusals
    from infra.databases import PartnerDatabaseUnavailable

    settings.REFUSAL_FLUSH_SECONDS = 0
    ledger = _ledger(monkeypatch)
    partner = make_partner("involve_asia", postback_secret="s" * 24)
    real = refusals.daily_counter_increment

    def away(**kwargs):
        raise PartnerDatabaseUnavailable(partner.database_alias, "connection refused")

    monkeypatch.setattr(refusals, "daily_counter_increment", away)
    assert client.get(f"{URL}?conversion_id=r1&token=nope").status_code == 403
    monkeypatch.setattr(refusals, "daily_counter_increment", real)  # the database is back
    deadline = time.monotonic() + 10
    while _stored_counts(partner) != {"token_invalid": 1} and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _stored_counts(partner) == {"token_invalid": 1}
    assert ledger._exit_registered  # and what is still pending at exit is written then


@pytest.mark.parametrize("flush_seconds", [0, 60])
def test_a_slow_partner_database_delays_only_its_own_refusal_counts(make_partner, settings, monkeypatch, flush_seconds):
    import threading

    from conversions.ingest import refusals

    settings.REFUSAL_FLUSH_SECONDS = flush_seconds
    ledger = _ledger(monkeypatch)
    fast, slow = make_partner("involve_asia", postback_secret="s" * 24), make_partner("rector")
    real = refusals.daily_counter_increment

    def slow_for_one(**kwargs):
        if kwargs["alias"] == slow.database_alias:
            time.sleep(3)
        return real(**kwargs)

    monkeypatch.setattr(refusals, "daily_counter_increment", slow_for_one)
    if flush_seconds:  # the ledger's thread writes the slow partner's count
        refusals.refusal_record(partner=slow, reason="token_invalid")
        writing = threading.Thread(target=ledger.flush)
    else:  # the refusing request writes it
        writing = threading.Thread(target=refusals.refusal_record, kwargs={"partner": slow, "reason": "token_invalid"})
    writing.start()
    time.sleep(0.3)  # the slow partner's count is being written
    started = time.monotonic()
    refusals.refusal_record(partner=fast, reason="token_invalid")
    counts = refusal_counts(partner=fast)  # the admin's partner list reads it per partner
    elapsed = time.monotonic() - started
    writing.join()
    assert [(row.reason, row.count) for row in counts] == [("token_invalid", 1)]
    assert elapsed < 1.5, f"the other partner waited {elapsed:.1f} s for the slow database"
