"""Channel health, in `default`: what the checker learned per partner, the incidents its
rules opened and resolved, and the notifications they owe people.

- `HourlyCount`: postbacks per partner and hour (received, invalid), rolled up by the
  checker from the partner's own table, a few hours at a time: the "normal" of a partner
  for an hour of the week is read from here, not from millions of rows.
- `PartnerHealth`: the partner's last evaluated signals (the health page and the metrics).
- `HealthSettings`: a partner's overrides of the rules' thresholds (none: the defaults).
- `Incident` and `IncidentEvent`: one incident per partner and rule while it lasts, its
  history; `Notification`: one message to send (email or webhook) when an incident opens or
  resolves, claimed by one worker, retried.
"""

from django.db import models
from django.db.models import Q
from django.utils import timezone

SILENT = "silent"
DROP = "drop"
INVALID_SPIKE = "invalid_spike"
REFUSAL_SPIKE = "refusal_spike"
STORAGE_FAILING = "storage_failing"
RECONCILIATION_DRIFT = "reconciliation_drift"
PUBLISHER_PAUSED = "publisher_paused"
SOURCE_FAILING = "source_failing"
RULES = [
    (SILENT, "silent"),
    (DROP, "drop in traffic"),
    (INVALID_SPIKE, "invalid postbacks spike"),
    (REFUSAL_SPIKE, "refused postbacks spike"),
    (STORAGE_FAILING, "storage failing"),
    (RECONCILIATION_DRIFT, "reconciliation drift"),
    (PUBLISHER_PAUSED, "publisher paused"),
    (SOURCE_FAILING, "report source failing"),
]


class HourlyCount(models.Model):
    partner = models.ForeignKey("partners.Partner", on_delete=models.CASCADE, related_name="+")
    hour = models.DateTimeField(help_text="The hour's start (UTC).")
    received = models.PositiveIntegerField(default=0, help_text="Postbacks stored (originals, repeats, invalid).")
    invalid = models.PositiveIntegerField(default=0, help_text="Of them, rejected as invalid.")

    class Meta:
        db_table = "health_hourly_counts"
        constraints = [models.UniqueConstraint(fields=["partner", "hour"], name="one_count_per_partner_hour")]

    def __str__(self) -> str:
        return f"{self.partner_id} {self.hour:%Y-%m-%d %H}: {self.received}"


class PartnerHealth(models.Model):
    GREEN, AMBER, RED = "green", "amber", "red"
    LIGHTS = [(GREEN, "green"), (AMBER, "amber"), (RED, "red")]

    partner = models.OneToOneField("partners.Partner", on_delete=models.CASCADE, related_name="health")
    light = models.CharField(max_length=5, choices=LIGHTS, default=GREEN)
    last_received_at = models.DateTimeField(null=True, blank=True)
    counted_through = models.DateTimeField(
        null=True, blank=True, help_text="Rows received before this are in the hourly counts."
    )
    first_counted_at = models.DateTimeField(
        null=True, blank=True, help_text="The first hour in the hourly counts: weeks before it have no normal."
    )
    refusals_seen = models.JSONField(default=dict, blank=True, help_text="Refusal counters as last read (a delta).")
    signals = models.JSONField(default=dict, blank=True, help_text="The last evaluation's numbers.")
    checked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "health_partners"

    def __str__(self) -> str:
        return f"{self.partner_id}: {self.light}"


class HealthSettings(models.Model):
    """A partner's own thresholds; a rule left out keeps its default (health/rules.py)."""

    partner = models.OneToOneField("partners.Partner", on_delete=models.CASCADE, related_name="health_settings")
    overrides = models.JSONField(
        default=dict,
        blank=True,
        help_text='Rule -> its thresholds, e.g. {"silent": {"floor_minutes": 60}, "drop": {"enabled": false}}.',
    )

    class Meta:
        db_table = "health_settings"
        verbose_name_plural = "health settings"

    def __str__(self) -> str:
        return f"health settings of {self.partner_id}"


class Incident(models.Model):
    OPEN, RESOLVED = "open", "resolved"
    STATES = [(OPEN, "open"), (RESOLVED, "resolved")]

    partner = models.ForeignKey("partners.Partner", on_delete=models.CASCADE, related_name="incidents")
    rule = models.CharField(max_length=24, choices=RULES)
    state = models.CharField(max_length=8, choices=STATES, default=OPEN)
    subject = models.CharField(max_length=200, blank=True, default="", help_text="e.g. the paused publisher.")
    summary = models.CharField(max_length=300)
    evidence = models.JSONField(default=dict, blank=True)
    opened_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    resolved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "health_incidents"
        ordering = ["-opened_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["partner", "rule", "subject"], condition=Q(state="open"), name="one_open_incident_per_rule"
            )
        ]
        indexes = [models.Index(fields=["state", "partner"], name="incidents_by_state")]

    def __str__(self) -> str:
        return f"{self.get_rule_display()} ({self.state})"


class IncidentEvent(models.Model):
    incident = models.ForeignKey(Incident, on_delete=models.CASCADE, related_name="events")
    at = models.DateTimeField(default=timezone.now)
    kind = models.CharField(max_length=16, help_text="opened, updated, resolved, notified, notify_failed")
    text = models.TextField(blank=True, default="")
    evidence = models.JSONField(default=dict, blank=True)

    class Meta:
        db_table = "health_incident_events"
        ordering = ["at", "id"]

    def __str__(self) -> str:
        return f"{self.kind} at {self.at}"


class Notification(models.Model):
    """One message owed for an incident's opening or resolution, on one channel."""

    EMAIL, WEBHOOK = "email", "webhook"
    CHANNELS = [(EMAIL, "email"), (WEBHOOK, "webhook")]
    PENDING, SENT, FAILED = "pending", "sent", "failed"
    STATES = [(PENDING, "pending"), (SENT, "sent"), (FAILED, "failed")]

    incident = models.ForeignKey(Incident, on_delete=models.CASCADE, related_name="notifications")
    event = models.CharField(max_length=8, help_text="open or resolved")
    channel = models.CharField(max_length=8, choices=CHANNELS)
    recipients = models.JSONField(default=list, blank=True, help_text="Email addresses (email).")
    state = models.CharField(max_length=8, choices=STATES, default=PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    leased_until = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")
    sent_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        db_table = "health_notifications"
        ordering = ["created_at", "id"]
        constraints = [
            models.UniqueConstraint(fields=["incident", "event", "channel"], name="one_notification_per_event")
        ]
        indexes = [models.Index(fields=["state", "next_attempt_at"], name="notifications_due")]

    def __str__(self) -> str:
        return f"{self.channel} {self.event} of incident {self.incident_id} ({self.state})"
