"""Incidents told to people (health/notify.py): who gets the email, what the webhook says and
how it is signed, retries, refusals, and each notification sent once by concurrent senders.

Email goes to Django's locmem backend; the webhook to a real HTTP receiver on 127.0.0.1
(tests/support/fake_publisher.py: it records method, headers and body, and answers the
statuses it is told), reached through the outbound client with OUTBOUND_ALLOW_PRIVATE.
"""

import datetime
import hashlib
import hmac
import json
from collections.abc import Iterator

import pytest
from django.contrib.auth.models import Group, User
from django.core import mail
from django.core.mail.backends.base import BaseEmailBackend
from django.test import override_settings
from django.utils import timezone

from health.models import Incident, IncidentEvent, Notification
from health.notify import notification_claim, notification_record, notifications_queue, notifications_send
from partners.models import PartnerScope
from partners.services import admin_groups_ensure
from tests.conftest import run_concurrently
from tests.support.fake_publisher import FakePublisher

SECRET = "whsec-test-0123456789"  # noqa: S105 (a test secret)
LOCMEM = "django.core.mail.backends.locmem.EmailBackend"


@pytest.fixture(autouse=True)
def _alert_settings() -> Iterator[None]:
    with override_settings(
        EMAIL_BACKEND=LOCMEM,
        DEFAULT_FROM_EMAIL="alerts@postback.example",
        ALERT_EMAIL_TO=["ops@example.com"],
        ALERT_WEBHOOK_URL="",
        ALERT_WEBHOOK_SECRET="",
        ADMIN_BASE_URL="https://admin.example.com/",
        OUTBOUND_ALLOW_PRIVATE=True,
    ):
        mail.outbox = []
        yield


@pytest.fixture
def receiver() -> Iterator[FakePublisher]:
    with FakePublisher() as fake, override_settings(ALERT_WEBHOOK_URL=f"{fake.url}/hooks/alerts"):
        yield fake


@pytest.fixture
def people(live_db, involve, rector) -> dict[str, User]:
    """Account managers scoped to InvolveAsia, unscoped, inactive and without staff status;
    an analyst; a superuser outside the group."""
    admin_groups_ensure()
    managers, analysts = Group.objects.get(name="Account managers"), Group.objects.get(name="Analysts")

    def user(name: str, group: Group | None, **fields) -> User:
        made = User.objects.create_user(name, email=f"{name}@example.com", **{"is_staff": True, **fields})
        if group:
            made.groups.add(group)
        return made

    made = {
        "scoped": user("scoped", managers),
        "unscoped": user("unscoped", managers),
        "inactive": user("inactive", managers, is_active=False),
        "not_staff": user("notstaff", managers, is_staff=False),
        "analyst": user("analyst", analysts),
        "root": User.objects.create_superuser("root", email="root@example.com"),
    }
    PartnerScope.objects.create(user=made["scoped"]).partners.set([involve])
    return made


def incident_open(partner, **fields) -> Incident:
    values = {
        "rule": "silent",
        "summary": "No postback for 95 minutes",
        "evidence": {"minutes_silent": 95, "expected_per_hour": 40},
        **fields,
    }
    return Incident.objects.create(partner=partner, **values)


def due() -> datetime.datetime:
    """A moment at which what was just queued is due."""
    return timezone.now() + datetime.timedelta(seconds=1)


def signature(body: bytes, timestamp: str) -> str:
    return "sha256=" + hmac.new(SECRET.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


@pytest.mark.parametrize("backend", ["sqlite"])
def test_the_email_goes_to_the_managers_who_see_the_partner_and_to_ops(people, involve, rector):
    notifications_queue(incident=incident_open(involve), event="open")
    notifications_queue(incident=incident_open(rector), event="open")

    by_partner = {n.incident.partner.partner_code: n for n in Notification.objects.filter(channel="email")}
    assert sorted(by_partner["involve_asia"].recipients) == [
        "ops@example.com",
        "scoped@example.com",
        "unscoped@example.com",
    ]
    assert sorted(by_partner["rector"].recipients) == ["ops@example.com", "unscoped@example.com"]
    assert not Notification.objects.filter(channel="webhook").exists()  # no ALERT_WEBHOOK_URL


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_group_scope_limits_its_managers_too(people, involve, rector):
    managers = Group.objects.get(name="Account managers")
    PartnerScope.objects.create(group=managers).partners.set([involve])

    notifications_queue(incident=incident_open(rector), event="open")

    assert Notification.objects.get(channel="email").recipients == ["ops@example.com"]


@pytest.mark.parametrize("backend", ["sqlite"])
def test_no_email_without_recipients_and_a_webhook_only_when_configured(live_db, involve):
    with override_settings(ALERT_EMAIL_TO=[]):
        assert notifications_queue(incident=incident_open(involve), event="open") == []
        with override_settings(ALERT_WEBHOOK_URL="https://hooks.example.com/x"):
            made = notifications_queue(incident=Incident.objects.get(), event="open")
    assert [(n.channel, n.recipients, n.state) for n in made] == [("webhook", [], "pending")]


@pytest.mark.parametrize("backend", ["sqlite"])
def test_queueing_twice_writes_each_notification_once(people, involve, receiver):
    incident = incident_open(involve)

    first = notifications_queue(incident=incident, event="open")
    second = notifications_queue(incident=incident, event="open")
    resolved = notifications_queue(incident=incident, event="resolved")

    assert sorted(n.channel for n in first) == ["email", "webhook"]
    assert second == []
    assert len(resolved) == 2
    assert Notification.objects.count() == 4
    with pytest.raises(ValueError, match="unknown incident event"):
        notifications_queue(incident=incident, event="updated")


@pytest.mark.parametrize("backend", ["sqlite"])
def test_the_email_is_sent_once_with_the_text_and_evidence(people, involve):
    incident = incident_open(involve)
    notifications_queue(incident=incident, event="open")

    assert notifications_send(now=due()) == {"sent": 1, "retry": 0, "failed": 0}
    assert notifications_send(now=due() + datetime.timedelta(hours=1)) == {"sent": 0, "retry": 0, "failed": 0}

    [email] = mail.outbox
    assert email.subject == "[postback] InvolveAsia: silent — open"
    assert sorted(email.to) == ["ops@example.com", "scoped@example.com", "unscoped@example.com"]
    assert email.from_email == "alerts@postback.example"
    assert "No postback for 95 minutes" in email.body
    assert "minutes silent: 95\n" in email.body and "expected per hour: 40\n" in email.body
    assert f"https://admin.example.com/admin/health/incident/{incident.pk}/change/" in email.body
    notification = Notification.objects.get()
    assert (notification.state, notification.attempts, notification.leased_until) == ("sent", 1, None)
    assert notification.sent_at is not None
    [event] = IncidentEvent.objects.filter(incident=incident)
    assert event.kind == "notified"
    assert "email to" in event.text and "scoped@example.com" in event.text and "ops@example.com" in event.text


@pytest.mark.parametrize("backend", ["sqlite"])
def test_the_webhook_carries_text_and_fields_signed_with_the_secret(live_db, involve, receiver):
    incident = incident_open(involve)
    with override_settings(ALERT_WEBHOOK_SECRET=SECRET, ALERT_EMAIL_TO=[]):
        notifications_queue(incident=incident, event="open")
        assert notifications_send(now=due())["sent"] == 1

    [request] = receiver.requests()
    assert (request.method, request.path) == ("POST", "/hooks/alerts")
    assert request.headers["content-type"] == "application/json"
    timestamp = request.headers["x-postback-timestamp"]
    assert abs(int(timestamp) - timezone.now().timestamp()) < 60
    assert request.headers["x-postback-signature"] == signature(request.body, timestamp)
    assert request.headers["x-postback-signature"] != signature(request.body + b" ", timestamp)
    body = json.loads(request.body)
    assert body["partner"] == {"code": "involve_asia", "name": "InvolveAsia"}
    assert (body["rule"], body["rule_label"], body["state"]) == ("silent", "silent", "open")
    assert body["incident_id"] == incident.pk
    assert body["summary"] == "No postback for 95 minutes"
    assert body["evidence"] == {"minutes_silent": 95, "expected_per_hour": 40}
    assert body["opened_at"] == incident.opened_at.astimezone(datetime.UTC).isoformat()
    assert body["resolved_at"] is None
    assert body["admin_url"] == f"https://admin.example.com/admin/health/incident/{incident.pk}/change/"
    for words in ("InvolveAsia", "silent", "open", "minutes silent: 95", body["admin_url"]):
        assert words in body["text"]
    assert IncidentEvent.objects.get().text == "open: webhook to 127.0.0.1"


@pytest.mark.parametrize("backend", ["sqlite"])
def test_the_resolution_says_resolved_and_waits_for_the_opening(live_db, involve, receiver):
    incident = incident_open(involve, rule="publisher_paused", subject="rampup")
    with override_settings(ALERT_EMAIL_TO=[]):
        notifications_queue(incident=incident, event="open")
        receiver.answers(500)
        assert notifications_send(now=due()) == {"sent": 0, "retry": 1, "failed": 0}
        Incident.objects.filter(pk=incident.pk).update(state="resolved", resolved_at=timezone.now())
        notifications_queue(incident=Incident.objects.get(), event="resolved")
        # The opening waits for its retry: its resolution is not told before it.
        assert notifications_send(now=due()) == {"sent": 0, "retry": 0, "failed": 0}
        assert notifications_send(now=due() + datetime.timedelta(seconds=61)) == {"sent": 2, "retry": 0, "failed": 0}

    opening, resolution = (json.loads(r.body) for r in receiver.requests()[1:])
    assert (opening["state"], resolution["state"]) == ("open", "resolved")
    assert "resolved since" in opening["text"]
    assert resolution["text"].startswith("InvolveAsia: publisher paused (rampup) — resolved")
    assert resolution["subject"] == "rampup" and resolution["resolved_at"] is not None


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_500_is_retried_after_the_backoff_and_sent_then(live_db, involve, receiver):
    incident = incident_open(involve)
    with override_settings(ALERT_EMAIL_TO=[]):
        notifications_queue(incident=incident, event="open")
    receiver.answers(500)
    start = due()

    assert notifications_send(now=start) == {"sent": 0, "retry": 1, "failed": 0}
    notification = Notification.objects.get()
    assert (notification.state, notification.attempts) == ("pending", 1)
    assert notification.next_attempt_at == start + datetime.timedelta(seconds=60)
    assert notification.last_error.startswith("HTTP 500")
    assert notifications_send(now=start + datetime.timedelta(seconds=59)) == {"sent": 0, "retry": 0, "failed": 0}

    assert notifications_send(now=start + datetime.timedelta(seconds=60)) == {"sent": 1, "retry": 0, "failed": 0}
    assert len(receiver.requests()) == 2
    notification.refresh_from_db()
    assert (notification.state, notification.attempts, notification.last_error) == ("sent", 2, "")
    assert [e.kind for e in IncidentEvent.objects.filter(incident=incident)] == ["notify_failed", "notified"]
    assert "HTTP 500" in IncidentEvent.objects.filter(kind="notify_failed").get().text


@pytest.mark.parametrize("backend", ["sqlite"])
def test_the_backoff_is_60_300_1800_7200_seconds_then_failed(live_db, involve, receiver):
    with override_settings(ALERT_EMAIL_TO=[]):
        notifications_queue(incident=incident_open(involve), event="open")
    receiver.default_status = 503
    now = due()
    waits = []
    for _ in range(4):
        assert notifications_send(now=now)["retry"] == 1
        next_attempt_at = Notification.objects.get().next_attempt_at
        waits.append((next_attempt_at - now).total_seconds())
        now = next_attempt_at

    assert notifications_send(now=now) == {"sent": 0, "retry": 0, "failed": 1}
    assert waits == [60, 300, 1800, 7200]
    notification = Notification.objects.get()
    assert (notification.state, notification.attempts, notification.last_error) == (
        "failed",
        5,
        "HTTP 503: " + '{"error": "nope"}',
    )
    assert notifications_send(now=now + datetime.timedelta(days=1))["failed"] == 0
    assert len(receiver.requests()) == 5
    assert "given up after 5 attempts" in IncidentEvent.objects.last().text


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_private_webhook_address_is_refused_without_outbound_allow_private(live_db, involve, receiver):
    with override_settings(ALERT_EMAIL_TO=[], OUTBOUND_ALLOW_PRIVATE=False):
        notifications_queue(incident=incident_open(involve), event="open")
        # Refused like any failed attempt: retried (a refusal can be a name that did not resolve).
        assert notifications_send(now=due()) == {"sent": 0, "retry": 1, "failed": 0}

    assert receiver.requests() == []
    notification = Notification.objects.get()
    assert notification.state == "pending"
    assert "127.0.0.1 is a loopback address" in notification.last_error
    assert "OUTBOUND_ALLOW_PRIVATE" in notification.last_error
    assert "OUTBOUND_ALLOW_PRIVATE" in IncidentEvent.objects.get(kind="notify_failed").text


class FailingEmailBackend(BaseEmailBackend):
    def send_messages(self, email_messages):
        raise ConnectionRefusedError("[Errno 111] Connection refused")


@pytest.mark.parametrize("backend", ["sqlite"])
def test_an_email_the_server_refuses_is_retried(people, involve):
    notifications_queue(incident=incident_open(involve), event="open")
    with override_settings(EMAIL_BACKEND=f"{__name__}.FailingEmailBackend"):
        assert notifications_send(now=due()) == {"sent": 0, "retry": 1, "failed": 0}

    notification = Notification.objects.get()
    assert notification.last_error == "email not sent: ConnectionRefusedError: [Errno 111] Connection refused"
    assert notifications_send(now=notification.next_attempt_at)["sent"] == 1
    assert len(mail.outbox) == 1


@pytest.mark.parametrize("backend", ["sqlite"])
def test_an_expired_lease_is_claimed_again_and_the_late_worker_records_nothing(live_db, involve, receiver):
    with override_settings(ALERT_EMAIL_TO=[]):
        notifications_queue(incident=incident_open(involve), event="open")
    start = due()
    dead_lease = start + datetime.timedelta(seconds=90)
    claimed = notification_claim(now=start, lease_until=dead_lease)  # a worker that dies mid-send
    assert claimed is not None

    assert notifications_send(now=start + datetime.timedelta(seconds=30))["sent"] == 0  # still leased
    assert notifications_send(now=start + datetime.timedelta(seconds=91))["sent"] == 1

    assert notification_record(notification=claimed, error="", now=start, lease_until=dead_lease) is None
    assert IncidentEvent.objects.filter(kind="notified").count() == 1
    assert len(receiver.requests()) == 1


@pytest.mark.parametrize("backend", ["sqlite"])
def test_concurrent_senders_send_each_notification_once(people, involve, rector):
    with FakePublisher(delay=0.02) as receiver, override_settings(ALERT_WEBHOOK_URL=receiver.url):
        incidents = [incident_open(partner, subject=f"s{i}") for i in range(6) for partner in (involve, rector)]
        for incident in incidents:
            notifications_queue(incident=incident, event="open")
        now = due()

        results = run_concurrently(lambda _i: notifications_send(now=now), 4)

    assert not [r for r in results if isinstance(r, Exception)], results
    assert sum(r["sent"] for r in results) == 24
    assert sorted(json.loads(r.body)["incident_id"] for r in receiver.requests()) == sorted(i.pk for i in incidents)
    assert len(mail.outbox) == 12
    assert set(Notification.objects.values_list("state", "attempts")) == {("sent", 1)}
    assert IncidentEvent.objects.filter(kind="notified").count() == 24


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_message_that_cannot_be_built_is_a_failed_attempt_not_a_stuck_lease(live_db, involve, receiver, monkeypatch):
    with override_settings(ALERT_EMAIL_TO=[]):
        notifications_queue(incident=incident_open(involve), event="open")

    def broken(**_kwargs):
        raise KeyError("rule_label")

    monkeypatch.setattr("health.notify.notification_message", broken)
    assert notifications_send(now=due()) == {"sent": 0, "retry": 1, "failed": 0}

    notification = Notification.objects.get()
    assert (notification.state, notification.leased_until, notification.last_error) == (
        "pending",
        None,
        "KeyError: 'rule_label'",
    )
    assert receiver.requests() == []
