from django.db import models
from django.db.models import Q
from django.utils import timezone

from partners.mapping import CANONICAL_FIELDS


def _max_length(name: str) -> int:
    return CANONICAL_FIELDS[name].max_length


class PartnerConversion(models.Model):
    """One postback received from a partner, stored in that partner's own database.

    Exactly one *original* exists per (partner, conversion_id): the database enforces it
    with a partial unique index. Repeats are stored as duplicates pointing at the
    original; invalid postbacks as rejected rows (processing_error + raw data).
    """

    # The partner lives in `default`; no cross-database foreign key.
    partner_id = models.BigIntegerField(db_index=False)
    conversion_id = models.CharField(max_length=_max_length("conversion_id"))
    offer_id = models.CharField(max_length=_max_length("offer_id"), null=True, blank=True)
    offer_name = models.TextField(null=True, blank=True)
    conversion_datetime = models.DateTimeField(null=True, blank=True)
    usd_sale_amount = models.DecimalField(max_digits=15, decimal_places=2, null=True, blank=True)
    usd_earning = models.DecimalField(max_digits=15, decimal_places=2, null=True, blank=True)
    media_id = models.CharField(max_length=_max_length("media_id"), null=True, blank=True)
    sub_id = models.CharField(max_length=_max_length("sub_id"), null=True, blank=True)
    click_id = models.CharField(max_length=_max_length("click_id"), null=True, blank=True)
    status = models.CharField(max_length=_max_length("status"), null=True, blank=True)
    currency = models.CharField(max_length=_max_length("currency"), null=True, blank=True)
    is_processed = models.BooleanField(default=False)
    is_duplicate = models.BooleanField(default=False)
    duplicate_of = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="duplicates",
        db_constraint=False,
    )
    processing_error = models.TextField(null=True, blank=True)
    raw_data = models.JSONField(default=dict)
    request_headers = models.JSONField(default=dict)
    request_ip = models.CharField(max_length=45, null=True, blank=True)
    received_at = models.DateTimeField(default=timezone.now)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "partner_conversions"
        ordering = ["-received_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["partner_id", "conversion_id"],
                condition=Q(is_duplicate=False, processing_error__isnull=True),
                name="one_original_per_conversion",
            ),
        ]
        indexes = [
            models.Index(fields=["partner_id", "conversion_id"], name="conversion_lookup"),
            models.Index(fields=["-received_at", "-id"], name="received_newest"),
            models.Index(fields=["conversion_datetime"], name="conversion_time"),
            # The read API's exact filters, each already in its newest-first order, so a
            # filtered page reads `limit` index entries whatever the table's size.
            models.Index(fields=["offer_id", "-received_at", "-id"], name="offer_newest"),
            models.Index(fields=["sub_id", "-received_at", "-id"], name="sub_newest"),
            models.Index(fields=["media_id", "-received_at", "-id"], name="media_newest"),
            models.Index(fields=["click_id", "-received_at", "-id"], name="click_newest"),
            # Stats read accepted rows from this index alone (an index-only scan on
            # PostgreSQL; SQLite keeps the key and condition only), rejected ones from
            # the next. offer_name stays out: one long name would overflow a btree entry.
            models.Index(
                fields=["received_at"],
                include=["partner_id", "offer_id", "is_duplicate", "usd_sale_amount", "usd_earning"],
                condition=Q(processing_error__isnull=True),
                name="stats_accepted",
            ),
            models.Index(fields=["received_at"], condition=Q(processing_error__isnull=False), name="stats_rejected"),
        ]

    def __str__(self) -> str:
        return self.conversion_id or f"rejected #{self.pk}"

    @property
    def outcome(self) -> str:
        if self.processing_error is not None:
            return "rejected"
        return "duplicate" if self.is_duplicate else "original"
