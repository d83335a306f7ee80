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
    settings.QUOTA_FLUSH_SECONDS = 60
    partner = make_partner("involve_asia", postback_secret="s" * 24)
    for n in range(20):
        assert client.get(f"{URL}?conversion_id=r{n}&token=nope").status_code == 403
    assert _stored_counts(partner) == {}  # nothing written by the refused postbacks themselves

    # This process's pending counts are added before it reads them.
    assert {row.reason: row.count for row in refusal_counts(partner=partner)} == {"token_invalid": 20}
    assert _stored_counts(partner) == {"token_invalid": 20}

    # And by its own thread within QUOTA_FLUSH_SECONDS, with nobody reading.
    settings.QUOTA_FLUSH_SECONDS = 0.2
    for n in range(5):
        client.get(f"{URL}?conversion_id=s{n}&token=nope")
    deadline = time.monotonic() + 10
    while _stored_counts(partner) != {"token_invalid": 25} and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _stored_counts(partner) == {"token_invalid": 25}


def test_counts_wait_for_a_partner_database_that_is_away(client, make_partner, settings, monkeypatch):
    from conversions.ingest import refusals
    from partners.databases import PartnerDatabaseUnavailable

    settings.QUOTA_FLUSH_SECONDS = 60
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
