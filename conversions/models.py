from typing import Any

from django.db import models
from django.db.models import Q
from django.utils import timezone

from conversions.outcomes import RowKind
from partners.lifecycle import STATUS_CHOICES
from partners.mapping import CANONICAL_FIELDS, STATUS_RAW_MAX_LENGTH

# The one definition of an original: the rows the partial unique index
# `one_original_per_conversion` covers, exactly one per (partner, conversion_id). The ORM
# filters with ORIGINAL; the postback's own SQL with ORIGINAL_SQL, kept equal to it by a test.
ORIGINAL = Q(is_duplicate=False, processing_error__isnull=True)
ORIGINAL_SQL = "NOT is_duplicate AND processing_error IS NULL"
# Digests of the requests applied to an original kept on it (the newest ones).
REQUEST_DIGESTS_KEPT = 32
# What brought a change (hooks.Source): a postback, a reprocessed one, a network's report.
CHANGE_SOURCES = [("postback", "postback"), ("reprocess", "reprocess"), ("report", "report")]


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
    status = models.CharField(max_length=16, choices=STATUS_CHOICES, null=True, blank=True)
    status_raw = models.CharField(
        max_length=STATUS_RAW_MAX_LENGTH, null=True, blank=True, help_text="The status as the partner sent it."
    )
    currency = models.CharField(
        max_length=_max_length("currency"), null=True, blank=True, help_text="ISO 4217 code of the local amounts."
    )
    sale_amount_local = models.DecimalField(max_digits=15, decimal_places=2, null=True, blank=True)
    payout_local = models.DecimalField(max_digits=15, decimal_places=2, null=True, blank=True)
    # The seed's name for "this row is the original" (ORIGINAL decides it; kept in step).
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
    request_digests = models.JSONField(
        default=list,
        blank=True,
        help_text="On an original: digests of the requests applied to it, so a replayed one is a duplicate.",
    )
    received_at = models.DateTimeField(default=timezone.now)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    imported_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="When it was brought from the previous service's history (import_legacy); empty if received here.",
    )

    class Meta:
        db_table = "partner_conversions"
        ordering = ["-received_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["partner_id", "conversion_id"], condition=ORIGINAL, name="one_original_per_conversion"
            ),
        ]
        indexes = [
            models.Index(fields=["partner_id", "conversion_id"], name="conversion_lookup"),
            models.Index(fields=["-received_at", "-id"], name="received_newest"),
            models.Index(fields=["conversion_datetime"], name="conversion_time"),
            # Exact filters (API, admin) already in newest-first order, so a filtered page
            # reads `limit` index entries whatever the table's size; the pattern opclass on
            # the first column also serves the admin's prefix search (LIKE 'x%') under
            # any collation.
            models.Index(fields=["offer_id", "-received_at", "-id"], name="offer_newest"),
            models.Index(
                fields=["sub_id", "-received_at", "-id"],
                opclasses=["varchar_pattern_ops", "timestamptz_ops", "int8_ops"],
                name="sub_newest",
            ),
            models.Index(
                fields=["media_id", "-received_at", "-id"],
                opclasses=["varchar_pattern_ops", "timestamptz_ops", "int8_ops"],
                name="media_newest",
            ),
            models.Index(
                fields=["click_id", "-received_at", "-id"],
                opclasses=["varchar_pattern_ops", "timestamptz_ops", "int8_ops"],
                name="click_newest",
            ),
            # Stats read accepted rows from this index alone (an index-only scan on
            # PostgreSQL; SQLite keeps the key and condition only), rejected ones from
            # the next. offer_name stays out: one long name would overflow a btree entry.
            models.Index(
                fields=["received_at"],
                include=["partner_id", "offer_id", "is_duplicate", "status", "usd_sale_amount", "usd_earning"],
                condition=Q(processing_error__isnull=True),
                name="stats_accepted",
            ),
            models.Index(fields=["received_at"], condition=Q(processing_error__isnull=False), name="stats_rejected"),
            # The dashboard's top sub_id prefixes, read from this index alone (as stats_accepted).
            models.Index(
                fields=["received_at"],
                include=["partner_id", "sub_id", "is_duplicate", "usd_sale_amount", "usd_earning"],
                condition=Q(processing_error__isnull=True),
                name="stats_sub_id",
            ),
            # PostgreSQL also has the admin's case-insensitive search indexes
            # (migration 0007_analysts_dashboard_and_search_indexes), created there only.
        ]

    def __str__(self) -> str:
        return self.conversion_id or f"invalid #{self.pk}"

    @property
    def outcome(self) -> RowKind:
        """What this row is: the original, a duplicate or an invalid postback."""
        return row_kind(is_duplicate=self.is_duplicate, processing_error=self.processing_error)

    def canonical_values(self) -> dict[str, Any]:
        """Our canonical fields (CANONICAL_FIELDS) as stored: what a decision, a publisher's
        payout and its postback URL read of a conversion."""
        return {name: getattr(self, name) for name in CANONICAL_FIELDS}


def row_kind(*, is_duplicate: bool, processing_error: str | None) -> RowKind:
    """What a row with these values is (ORIGINAL's definition, for values read without the model)."""
    if processing_error is not None:
        return RowKind.INVALID
    return RowKind.DUPLICATE if is_duplicate else RowKind.ORIGINAL


class ConversionChange(models.Model):
    """A later postback for a stored conversion that differed from it: applied or not.

    Applied changes updated the original (status, amounts); the rest were stale
    retries that would have rolled the state back, recorded here and not applied.
    """

    conversion = models.ForeignKey(
        PartnerConversion, on_delete=models.CASCADE, related_name="changes", db_constraint=False
    )
    from_status = models.CharField(max_length=16, choices=STATUS_CHOICES, null=True, blank=True)
    to_status = models.CharField(max_length=16, choices=STATUS_CHOICES, null=True, blank=True)
    changes = models.JSONField(default=dict, help_text="field -> [before, after] as received.")
    applied = models.BooleanField()
    note = models.TextField(blank=True, default="")
    raw_data = models.JSONField(default=dict)
    request_ip = models.CharField(max_length=45, null=True, blank=True)
    source = models.CharField(max_length=16, choices=CHANGE_SOURCES, default="postback")
    received_at = models.DateTimeField(default=timezone.now)

    class Meta:
        db_table = "partner_conversion_changes"
        ordering = ["received_at", "id"]

    def __str__(self) -> str:
        state = "applied" if self.applied else "not applied"
        return f"{self.from_status} -> {self.to_status} ({state})"


class DailyCounter(models.Model):
    """A per-partner, per-day count kept in the partner's database.

    `name` is `requests` (the daily quota, when Redis is not used) or
    `rejected:<reason>` (the audit of refused postbacks). Incremented with one atomic
    upsert, so every worker and instance shares the same number.
    """

    partner_id = models.BigIntegerField()
    day = models.DateField(help_text="The partner's local day.")
    name = models.CharField(max_length=64)
    count = models.BigIntegerField(default=0)
    last_at = models.DateTimeField(default=timezone.now)

    class Meta:
        db_table = "postback_daily_counters"
        ordering = ["-day", "name"]
        constraints = [
            models.UniqueConstraint(fields=["partner_id", "day", "name"], name="one_counter_per_partner_day_name"),
        ]

    def __str__(self) -> str:
        return f"{self.day} {self.name}: {self.count}"
