"""`manage.py reconcile`: every API source or one partner's, a WARNING per partner, metrics."""

import logging
from io import StringIO
from urllib.parse import parse_qsl, urlencode

import pytest
from django.core.management import CommandError, call_command
from django.test import override_settings

from reconciliation.models import ReconciliationRun, ReportSource
from tests.conftest import fixture_queries
from tests.reconciliation.fake_involve_asia import FakeInvolveAsia

KEY, SECRET = "ia-key-0c41", "ia-secret-a9d2e7"
BASE = dict(parse_qsl(fixture_queries("involve_asia", "lifecycle_approve")[0]))
pytestmark = pytest.mark.parametrize("backend", ["postgres"])


@pytest.fixture
def today_records(involve):
    moment = involve.local_now().strftime("%Y-%m-%d 00:00:01")
    return [{**BASE, "conversion_id": f"IA-{n}", "datetime_conversion": moment} for n in range(1, 6)]


@pytest.fixture
def fake(today_records):
    server = FakeInvolveAsia(today_records, key=KEY, secret=SECRET)
    yield server
    server.stop()


def test_reconcile_a_partner_warns_once_about_its_missing_conversions_and_exports_metrics(
    client, involve, rector, fake, today_records, caplog
):
    ReportSource.objects.create(
        partner=involve, name="IA API", kind="involve_asia", base_url=fake.base_url, api_key=KEY, api_secret=SECRET
    )
    ReportSource.objects.create(partner=rector, name="Rector CSV", kind="csv")  # no API: not scheduled
    for record in today_records[:2]:
        assert client.get("/partner/involve/event?" + urlencode(record)).json()["status"] == "success"
    out = StringIO()
    caplog.set_level(logging.INFO, logger="reconciliation")

    call_command("reconcile", "--days", "2", stdout=out)

    run = ReconciliationRun.objects.using(involve.database_alias).get()
    assert run.counts["missing_here"] == 3 and run.counts["matched"] == 2
    assert (run.date_to - run.date_from).days == 1
    assert f"involve_asia IA API {run.date_from}..{run.date_to}: run #{run.pk}: missing_here=3" in out.getvalue()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith("reconcile partner=involve_asia missing_here=3:")
    assert not ReconciliationRun.objects.using(rector.database_alias).exists()

    with override_settings(METRICS_TOKEN="metrics-token-123"):
        body = client.get("/metrics", HTTP_AUTHORIZATION="Bearer metrics-token-123").content.decode()
    assert 'postback_reconciliation_discrepancies{kind="missing_here",partner="involve_asia"} 3.0' in body
    assert 'postback_reconciliation_discrepancies{kind="status_differs",partner="involve_asia"} 0.0' in body
    assert 'postback_reconciliation_last_run_failed{partner="involve_asia"} 0.0' in body
    assert "rector" not in body.split("postback_reconciliation_discrepancies", 1)[1]


def test_a_failed_run_makes_the_command_fail_and_names_the_partner(involve, fake):
    ReportSource.objects.create(
        partner=involve, name="IA API", kind="involve_asia", base_url=fake.base_url, api_key=KEY, api_secret="nope"
    )
    err = StringIO()
    with pytest.raises(CommandError, match="reconciliation failed for: involve_asia"):
        call_command("reconcile", "--partner", "involve_asia", stderr=err)
    assert "authentication failed: HTTP 401" in err.getvalue()
    assert "nope" not in err.getvalue()


def test_bad_arguments_are_clear_errors(involve):
    with pytest.raises(CommandError, match="partner 'involve_asia' has no active API report source"):
        call_command("reconcile", "--partner", "involve_asia")
    with pytest.raises(CommandError, match="--days must be between 1 and 366"):
        call_command("reconcile", "--days", "0")


def test_nothing_to_reconcile_and_an_unknown_partner_say_so(involve, capsys):
    call_command("reconcile")
    assert "nothing to reconcile: no active partner has an active API report source" in capsys.readouterr().out
    with pytest.raises(CommandError, match="there is no partner 'nosuch'"):
        call_command("reconcile", "--partner", "nosuch")
