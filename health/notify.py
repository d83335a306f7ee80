"""What incidents tell people: the notifications an incident's opening or resolution owes,
and the sending of them, once each, retried.

`notifications_queue` writes the rows (inside the caller's transaction: inserts only);
`notifications_send` claims due ones one at a time with a lease, sends each (email through
Django's mail API, the webhook through the publishers' outbound client, signed as our
postbacks are) and records the outcome and an IncidentEvent. `notification_message` is
what a notification says (the webhook's JSON body; the email's text is its `text`).
"""

import datetime
import json
import logging
import time
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.mail import EmailMessage, get_connection
from django.db import transaction
from django.db.models import Exists, OuterRef, Q
from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from urllib3.util import parse_url

from conversions.ingest.access import SIGNATURE_HEADER, TIMESTAMP_HEADER, postback_signature
from health.models import Incident, IncidentEvent, Notification
from infra.errors import error_first_line
from partners.selectors import partner_is_visible_to
from publishers.outbound import OutboundClient, outbound_client

EVENTS = (Incident.OPEN, Incident.RESOLVED)
# The admin group whose members are told about their partners' incidents (partners.services.ADMIN_GROUPS).
ACCOUNT_MANAGERS = "Account managers"
# Seconds before a failed notification is tried again, per failed attempt; failed after the last.
BACKOFF_SECONDS = (60, 300, 1800, 7200)
SUBJECT_PREFIX = "[postback]"

logger = logging.getLogger("health")


def notification_recipients(*, incident: Incident) -> list[str]:
    """The addresses an incident's email goes to: the active staff account managers who may
    see its partner (no PartnerScope: every partner), then ALERT_EMAIL_TO; each once."""
    managers = (
        get_user_model()
        .objects.filter(groups__name=ACCOUNT_MANAGERS, is_active=True, is_staff=True)
        .exclude(email="")
        .distinct()
        .order_by("pk")
    )
    addresses = [user.email for user in managers if partner_is_visible_to(user, incident.partner)]
    addresses += [address for address in settings.ALERT_EMAIL_TO if address.strip()]
    unique: dict[str, str] = {}
    for address in addresses:
        unique.setdefault(address.strip().lower(), address.strip())
    return list(unique.values())


def notifications_queue(*, incident: Incident, event: str) -> list[Notification]:
    """Write the notifications `event` ("open" or "resolved") of `incident` owes: an email
    when it has recipients, a webhook when ALERT_WEBHOOK_URL is set. Idempotent (a second
    call adds nothing); inserts only, for the caller's transaction. The rows this call added."""
    if event not in EVENTS:
        raise ValueError(f"unknown incident event {event!r}: one of {', '.join(EVENTS)}")
    existing = set(Notification.objects.filter(incident=incident, event=event).values_list("channel", flat=True))
    owed: list[Notification] = []
    if Notification.EMAIL not in existing:
        recipients = notification_recipients(incident=incident)
        if recipients:
            owed.append(Notification(incident=incident, event=event, channel=Notification.EMAIL, recipients=recipients))
    if Notification.WEBHOOK not in existing and settings.ALERT_WEBHOOK_URL:
        owed.append(Notification(incident=incident, event=event, channel=Notification.WEBHOOK))
    if not owed:
        return []
    # ON CONFLICT DO NOTHING: a concurrent call's rows win without failing the caller's transaction.
    Notification.objects.bulk_create(owed, ignore_conflicts=True)
    return list(
        Notification.objects.filter(incident=incident, event=event, channel__in=[n.channel for n in owed]).order_by(
            "id"
        )
    )


def incident_admin_url(incident: Incident) -> str:
    """The incident's page in the admin, absolute (ADMIN_BASE_URL)."""
    try:
        path = reverse("admin:health_incident_change", args=[incident.pk])
    except NoReverseMatch:  # the admin of incidents is not registered (yet)
        path = f"/admin/health/incident/{incident.pk}/change/"
    return settings.ADMIN_BASE_URL.rstrip("/") + path


def _iso(value: datetime.datetime | None) -> str | None:
    return value.astimezone(datetime.UTC).isoformat() if value else None


def _evidence_lines(evidence: dict[str, Any]) -> list[str]:
    return [f"{str(name).replace('_', ' ')}: {value}" for name, value in evidence.items()]


def notification_title(*, incident: Incident, event: str) -> str:
    """`InvolveAsia: silent — open` (with the subject, e.g. a paused publisher, in brackets)."""
    subject = f" ({incident.subject})" if incident.subject else ""
    return f"{incident.partner.partner_name}: {incident.get_rule_display()}{subject} — {event}"


def notification_message(*, incident: Incident, event: str) -> dict[str, Any]:
    """The webhook's JSON body for `event` of `incident`: `text` (what Slack shows: partner,
    rule, state, the evidence in words, the admin link) and the same as structured fields."""
    admin_url = incident_admin_url(incident)
    state = event
    if event == Incident.OPEN and incident.state == Incident.RESOLVED:
        state_note = f" (resolved since, at {_iso(incident.resolved_at)})"
    else:
        state_note = ""
    evidence = dict(incident.evidence or {})
    lines = [notification_title(incident=incident, event=event) + state_note, incident.summary]
    if evidence:
        lines.append("Evidence: " + "; ".join(_evidence_lines(evidence)))
    lines.append(admin_url)
    return {
        "text": "\n".join(lines),
        "partner": {"code": incident.partner.partner_code, "name": incident.partner.partner_name},
        "rule": incident.rule,
        "rule_label": incident.get_rule_display(),
        "subject": incident.subject,
        "state": state,
        "incident_id": incident.pk,
        "summary": incident.summary,
        "evidence": evidence,
        "opened_at": _iso(incident.opened_at),
        "resolved_at": _iso(incident.resolved_at),
        "admin_url": admin_url,
    }


def notification_email(*, notification: Notification) -> EmailMessage:
    """The email of a notification: the message's text, then the evidence one line each."""
    incident = notification.incident
    message = notification_message(incident=incident, event=notification.event)
    body = message["text"] + "\n"
    if message["evidence"]:
        body += "\n" + "\n".join(_evidence_lines(message["evidence"])) + "\n"
    return EmailMessage(
        subject=f"{SUBJECT_PREFIX} {notification_title(incident=incident, event=notification.event)}",
        body=body,
        from_email=settings.DEFAULT_FROM_EMAIL,
        to=notification.recipients,
    )


def webhook_request(*, body: bytes, secret: str, now: float) -> dict[str, str]:
    """The webhook's headers: JSON, and with a secret the timestamp and signature our signed
    postbacks carry (HMAC-SHA256 of `<timestamp>.<body>`)."""
    headers = {"Content-Type": "application/json"}
    if secret:
        timestamp = str(int(now))
        headers[TIMESTAMP_HEADER] = timestamp
        headers[SIGNATURE_HEADER] = postback_signature(secret=secret, query_string=b"", body=body, timestamp=timestamp)
    return headers


def notification_deliver(*, notification: Notification, client: OutboundClient) -> str:
    """Send one notification now: "" when sent, else what went wrong (never raises for it)."""
    if notification.channel == Notification.EMAIL:
        if not notification.recipients:
            return "no recipients"
        connection = get_connection(timeout=settings.EMAIL_TIMEOUT or settings.DELIVERY_READ_TIMEOUT)
        email = notification_email(notification=notification)
        email.connection = connection
        try:
            email.send()
        except Exception as exc:  # any backend's failure (SMTP, socket, ...) is this attempt's error
            return f"email not sent: {exc.__class__.__name__}: {error_first_line(exc)[:300]}"
        return ""
    url = settings.ALERT_WEBHOOK_URL
    if not url:
        return "ALERT_WEBHOOK_URL is not set"
    message = notification_message(incident=notification.incident, event=notification.event)
    body = json.dumps(message, sort_keys=True).encode()
    headers = webhook_request(body=body, secret=settings.ALERT_WEBHOOK_SECRET, now=time.time())
    result = client.send(method="POST", url=url, headers=headers, body=body)
    if result.succeeded:
        return ""
    if result.error:
        return result.error
    return f"HTTP {result.status_code}" + (f": {result.excerpt[:200]}" if result.excerpt else "")


def _webhook_host() -> str:
    try:
        return parse_url(settings.ALERT_WEBHOOK_URL).host or "?"
    except ValueError:
        return "?"


def _audience(notification: Notification) -> str:
    if notification.channel == Notification.EMAIL:
        return "email to " + ", ".join(notification.recipients)
    return f"webhook to {_webhook_host()}"


def notification_claim(*, now: datetime.datetime, lease_until: datetime.datetime) -> Notification | None:
    """Lease the next due notification: PENDING, due, not leased (or its lease expired), and
    for a resolution not before its opening's message on that channel is sent or failed."""
    opening_pending = Notification.objects.filter(
        incident=OuterRef("incident"), channel=OuterRef("channel"), event=Incident.OPEN, state=Notification.PENDING
    )
    with transaction.atomic():
        notification = (
            Notification.objects.select_related("incident__partner")
            .select_for_update(skip_locked=True, of=("self",))
            .filter(state=Notification.PENDING, next_attempt_at__lte=now)
            .filter(Q(leased_until__isnull=True) | Q(leased_until__lt=now))
            .exclude(Q(event=Incident.RESOLVED) & Exists(opening_pending))
            .order_by("next_attempt_at", "id")
            .first()
        )
        if notification is None:
            return None
        Notification.objects.filter(pk=notification.pk).update(leased_until=lease_until)
    notification.leased_until = lease_until
    return notification


def notification_record(
    *, notification: Notification, error: str, now: datetime.datetime, lease_until: datetime.datetime
) -> str | None:
    """Record one attempt (sent, pending again after the backoff, or failed) and its
    IncidentEvent; the new state, or None when the lease was lost (another worker holds it)."""
    attempts = notification.attempts + 1
    audience = _audience(notification)
    if not error:
        values = {"state": Notification.SENT, "sent_at": now, "last_error": ""}
        kind, text = "notified", f"{notification.event}: {audience}"
    elif attempts > len(BACKOFF_SECONDS):
        values = {"state": Notification.FAILED, "last_error": error}
        kind, text = (
            "notify_failed",
            f"{notification.event}: {audience} failed, given up after {attempts} attempts: {error}",
        )
    else:
        retry_at = now + datetime.timedelta(seconds=BACKOFF_SECONDS[attempts - 1])
        values = {"state": Notification.PENDING, "next_attempt_at": retry_at, "last_error": error}
        kind = "notify_failed"
        text = f"{notification.event}: {audience} failed (attempt {attempts}), retried at {_iso(retry_at)}: {error}"
    with transaction.atomic():
        # Compare-and-set on the lease: a worker whose lease expired and was taken over records nothing.
        updated = Notification.objects.filter(
            pk=notification.pk, state=Notification.PENDING, leased_until=lease_until
        ).update(attempts=attempts, leased_until=None, **values)
        if not updated:
            return None
        IncidentEvent.objects.create(
            incident_id=notification.incident_id,
            at=now,
            kind=kind,
            text=text,
            evidence={"channel": notification.channel, "event": notification.event, "attempts": attempts},
        )
    return values["state"]


def notifications_send(
    *, now: datetime.datetime | None = None, client: OutboundClient | None = None, limit: int = 100
) -> dict[str, int]:
    """Send up to `limit` due notifications, one claimed at a time with a lease
    (DELIVERY_LEASE_SECONDS; concurrent senders never send one twice while it holds), and
    record each. Counts: {"sent", "retry", "failed"}; a notification whose lease was lost
    mid-send is counted nowhere."""
    lease = datetime.timedelta(seconds=settings.DELIVERY_LEASE_SECONDS)
    counts = {"sent": 0, "retry": 0, "failed": 0}
    own_client = client is None
    client = client or outbound_client(pool_size=1)
    try:
        for _ in range(limit):
            claim_at = now or timezone.now()
            lease_until = claim_at + lease
            notification = notification_claim(now=claim_at, lease_until=lease_until)
            if notification is None:
                break
            try:
                error = notification_deliver(notification=notification, client=client)
            except Exception as exc:  # a bug here must not leave the row leased and retried forever untold
                logger.exception("notification %s could not be sent", notification.pk)
                error = f"{exc.__class__.__name__}: {error_first_line(exc)[:300]}"
            state = notification_record(
                notification=notification, error=error, now=now or timezone.now(), lease_until=lease_until
            )
            if state in (Notification.PENDING, Notification.FAILED):
                logger.log(
                    logging.ERROR if state == Notification.FAILED else logging.WARNING,
                    "incident=%s %s notification (%s) %s: %s",
                    notification.incident_id,
                    notification.event,
                    _audience(notification),
                    "failed for good" if state == Notification.FAILED else "failed, retried later",
                    error,
                )
            if state == Notification.SENT:
                counts["sent"] += 1
            elif state == Notification.PENDING:
                counts["retry"] += 1
            elif state == Notification.FAILED:
                counts["failed"] += 1
    finally:
        if own_client:
            client.close()
    return counts
