"""Publishers (configuration, in `default`) and their delivery outbox (in each partner's database)."""

import ipaddress
import re
from decimal import Decimal
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import models
from django.utils import timezone

from conversions.models import PartnerConversion
from partners.lifecycle import STATUSES
from publishers.outbound import address_refusal
from publishers.postback_urls import MACRO_PATTERN, TemplateError, template_validate

MATCH_FIELDS = [("sub_id", "sub_id"), ("media_id", "media_id")]
METHODS = [("GET", "GET"), ("POST", "POST (JSON body)")]
# What fires a postback: the conversion recorded, its status becoming one of ours, an amount corrected.
RECORDED = "recorded"
AMOUNT = "amount"
EVENTS = (RECORDED, *STATUSES, AMOUNT)
EVENT_CHOICES = [(RECORDED, "Recorded")] + [(s, f"Status -> {s}") for s in STATUSES] + [(AMOUNT, "Amount corrected")]
# A new publisher hears of each conversion and its outcome (not of every pending step or amount fix).
DEFAULT_EVENTS = [RECORDED, "approved", "rejected", "paid"]
NO_EVENT = "Choose at least one event: a publisher without one is never sent anything."

PERCENT_EARNING = "percent_earning"
PERCENT_SALE = "percent_sale"
FIXED = "fixed"
PAYOUT_KINDS = [
    (PERCENT_EARNING, "% of our earning (usd_earning)"),
    (PERCENT_SALE, "% of the sale amount (usd_sale_amount)"),
    (FIXED, "fixed amount (USD)"),
]


def split_lines(text: str) -> list[str]:
    """A list typed one per line or comma-separated, blanks dropped."""
    return [item.strip() for item in re.split(r"[,\n\r]+", text or "") if item.strip()]


def validate_template(value: str) -> None:
    try:
        template_validate(value)
    except TemplateError as exc:
        raise ValidationError(str(exc)) from exc


def validate_regex(value: str) -> None:
    if not value:
        return
    try:
        re.compile(value)
    except re.error as exc:
        raise ValidationError(f"not a valid regular expression: {exc}") from exc


def validate_recipients(value: str) -> None:
    for address in split_lines(value):
        try:
            validate_email(address)
        except ValidationError as exc:
            raise ValidationError(f"'{address}' is not an email address") from exc


def default_events() -> list[str]:
    return list(DEFAULT_EVENTS)


def validate_events(value) -> None:
    if not isinstance(value, list) or not all(isinstance(event, str) for event in value):
        raise ValidationError("a list of event names")
    unknown = [event for event in value if event not in EVENTS]
    if unknown:
        raise ValidationError(f"unknown event(s) {', '.join(unknown)}; known: {', '.join(EVENTS)}")


class Publisher(models.Model):
    """A downstream traffic source: which conversions are its own, and where to tell it."""

    code = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=200)
    is_active = models.BooleanField(default=True, help_text="Inactive: no deliveries are written for it.")
    paused_at = models.DateTimeField(
        null=True, blank=True, help_text="Paused: deliveries are kept, and sent once it is resumed."
    )
    paused_reason = models.TextField(blank=True, default="")
    consecutive_failures = models.PositiveIntegerField(default=0)

    partners = models.ManyToManyField(
        "partners.Partner", blank=True, help_text="The networks whose conversions it may match (none = every network)."
    )
    match_field = models.CharField(max_length=16, choices=MATCH_FIELDS, default="sub_id")
    match_prefixes = models.TextField(
        blank=True, default="", help_text="Prefixes of that field, one per line or comma-separated (e.g. RAMPUP, RPID)."
    )
    match_regex = models.CharField(
        max_length=500,
        blank=True,
        default="",
        validators=[validate_regex],
        help_text="Or a regular expression searched from the start, e.g. ^(OPPO|VIVO|OEM2|OEM3).*",
    )

    url_template = models.CharField(
        max_length=2000,
        validators=[validate_template],
        help_text="e.g. https://pub.example/postback?click={click_id}&payout={payout}&status={status}",
    )
    http_method = models.CharField(max_length=4, choices=METHODS, default="GET")
    events = models.JSONField(default=default_events, validators=[validate_events], blank=True)

    payout_kind = models.CharField(max_length=20, choices=PAYOUT_KINDS, default=PERCENT_SALE)
    payout_value = models.DecimalField(
        max_digits=12, decimal_places=4, default=Decimal("1"), help_text="A percentage, or USD for a fixed amount."
    )
    signing_secret = models.CharField(
        max_length=200,
        blank=True,
        default="",
        help_text="When set, each postback carries X-Postback-Signature (HMAC-SHA256) and X-Postback-Timestamp.",
    )
    report_recipients = models.TextField(
        blank=True, default="", validators=[validate_recipients], help_text="Emails for the weekly report."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["code"]

    def __str__(self) -> str:
        return f"{self.name} ({self.code})"

    def _clean_destination(self) -> None:
        """A template aimed at an address we never send to is refused when saved (a host
        name is checked at each send, where it is resolved)."""
        try:
            host = urlsplit(MACRO_PATTERN.sub("x", self.url_template or "")).hostname or ""
            ipaddress.ip_address(host)
        except ValueError:
            return
        refusal = address_refusal(host, allow_private=settings.OUTBOUND_ALLOW_PRIVATE)
        if refusal:
            raise ValidationError({"url_template": f"Postbacks are never sent there: {refusal}."})

    @property
    def is_paused(self) -> bool:
        return self.paused_at is not None

    @property
    def prefixes(self) -> list[str]:
        return split_lines(self.match_prefixes)

    @property
    def recipients(self) -> list[str]:
        return split_lines(self.report_recipients)

    def clean(self) -> None:
        self._clean_destination()
        if not self.events:
            raise ValidationError({"events": NO_EVENT})
        if bool(self.prefixes) == bool(self.match_regex):
            raise ValidationError(
                {"match_regex": "Give either a list of prefixes or a regular expression (one of them)."}
            )
        if self.payout_value is not None and self.payout_value < 0:
            raise ValidationError({"payout_value": "A payout is never negative."})


class PublisherOfferPayout(models.Model):
    """A payout rule for one offer of a publisher, instead of its default."""

    publisher = models.ForeignKey(Publisher, on_delete=models.CASCADE, related_name="offer_payouts")
    offer = models.CharField(max_length=255, help_text="The offer id, or the offer's exact name.")
    payout_kind = models.CharField(max_length=20, choices=PAYOUT_KINDS, default=PERCENT_SALE)
    payout_value = models.DecimalField(max_digits=12, decimal_places=4)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["publisher", "offer"], name="one_payout_per_publisher_offer")]
        ordering = ["offer"]

    def __str__(self) -> str:
        return f"{self.offer}: {self.payout_value} ({self.payout_kind})"

    def clean(self) -> None:
        if self.payout_value is not None and self.payout_value < 0:
            raise ValidationError({"payout_value": "A payout is never negative."})


PENDING = "pending"
DELIVERED = "delivered"
FAILED = "failed"
DELIVERY_STATES = [(PENDING, "Pending"), (DELIVERED, "Delivered"), (FAILED, "Failed")]


class Delivery(models.Model):
    """One postback owed to a publisher, written with the conversion change that caused it."""

    # The conversion lives in the same partner database; the publisher in `default`.
    conversion = models.ForeignKey(
        PartnerConversion, on_delete=models.CASCADE, related_name="deliveries", db_constraint=False
    )
    partner_id = models.BigIntegerField()
    publisher_id = models.BigIntegerField()
    event = models.CharField(max_length=16)
    source = models.CharField(max_length=16, default="postback", help_text="postback, reprocess, report or backfill.")
    idempotency_key = models.CharField(max_length=64)  # a uuid4: unique without an index to keep up
    method = models.CharField(max_length=4, default="GET")
    url = models.TextField()
    body = models.TextField(blank=True, default="")
    payout = models.DecimalField(max_digits=15, decimal_places=2, null=True, blank=True)
    state = models.CharField(max_length=16, choices=DELIVERY_STATES, default=PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    leased_until = models.DateTimeField(null=True, blank=True)
    lease_owner = models.CharField(max_length=64, blank=True, default="")
    last_status_code = models.PositiveIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")
    delivered_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        db_table = "publisher_deliveries"
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "deliveries"
        indexes = [
            models.Index(fields=["next_attempt_at"], condition=models.Q(state=PENDING), name="delivery_due"),
            models.Index(fields=["publisher_id", "-created_at"], name="delivery_publisher"),
            models.Index(fields=["conversion"], name="delivery_conversion"),
        ]
        constraints = [
            # A backfill run twice (or two at once) writes one delivery per conversion.
            models.UniqueConstraint(
                fields=["publisher_id", "conversion"],
                condition=models.Q(source="backfill"),
                name="one_backfill_per_publisher_conversion",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.event} #{self.conversion_id} -> publisher {self.publisher_id} ({self.state})"


class DeliveryAttempt(models.Model):
    """One try of a delivery: what was sent and what came back."""

    delivery = models.ForeignKey(Delivery, on_delete=models.CASCADE, related_name="attempt_log", db_constraint=False)
    number = models.PositiveIntegerField()
    worker = models.CharField(max_length=64, blank=True, default="")
    started_at = models.DateTimeField()
    duration_ms = models.PositiveIntegerField(default=0)
    status_code = models.PositiveIntegerField(null=True, blank=True)
    error = models.TextField(blank=True, default="")
    response_excerpt = models.TextField(blank=True, default="")

    class Meta:
        db_table = "publisher_delivery_attempts"
        ordering = ["started_at", "id"]

    def __str__(self) -> str:
        return f"attempt {self.number}: {self.status_code or self.error}"

    @property
    def succeeded(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300
