"""Report sources (configuration, in `default`) and reconciliation runs (partner databases)."""

import datetime

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone

from partners.lifecycle import STATUS_CHOICES
from partners.models import parameter_mapping_error, timezone_validate

CSV_UPLOAD = "csv"
INVOLVE_ASIA_API = "involve_asia"
SOURCE_KINDS = [(CSV_UPLOAD, "CSV upload"), (INVOLVE_ASIA_API, "InvolveAsia API")]
API_KINDS = frozenset({INVOLVE_ASIA_API})
# What a network publishes for its API: the most requests per minute per account
# (authentication included), the largest page, and the time zone its report's days and
# times are in.
API_REQUESTS_PER_MINUTE = {INVOLVE_ASIA_API: 60}
API_PAGE_SIZE_MAX = {INVOLVE_ASIA_API: 100}
REPORT_TIMEZONES = {INVOLVE_ASIA_API: "Asia/Kuala_Lumpur"}  # GMT+8, no daylight saving
REPORT_TIMEZONE_LABELS = {INVOLVE_ASIA_API: "GMT+8"}
PAGE_SIZE_LIMIT = 1000

# What a report row is, compared with our original of its conversion_id; discrepancies
# are listed in this order (the admin shows them first, then the matched rows).
MISSING_HERE = "missing_here"
MISSING_THERE = "missing_there"
STATUS_DIFFERS = "status_differs"
AMOUNT_DIFFERS = "amount_differs"
CURRENCY_DIFFERS = "currency_differs"
MATCHED = "matched"
ROW_KINDS = [
    (MISSING_HERE, "missing here (never received)"),
    (MISSING_THERE, "missing there (not in the report)"),
    (STATUS_DIFFERS, "status differs"),
    (AMOUNT_DIFFERS, "amount differs"),
    (CURRENCY_DIFFERS, "currency differs"),
    (MATCHED, "matched"),
]
DISCREPANCY_KINDS = tuple(kind for kind, _label in ROW_KINDS if kind != MATCHED)
# Rows "apply the report" may change: the conversion is stored here and in the report.
APPLICABLE_KINDS = (STATUS_DIFFERS, AMOUNT_DIFFERS, CURRENCY_DIFFERS)


class ReportSource(models.Model):
    """Where a partner's own report of its conversions comes from: a CSV upload or an API.

    The API key and secret are write-only in the admin (never shown again, never logged),
    like the partner's postback secret.
    """

    partner = models.ForeignKey("partners.Partner", on_delete=models.CASCADE, related_name="report_sources")
    name = models.CharField(max_length=100, help_text="e.g. 'InvolveAsia API' or 'Monthly CSV'.")
    kind = models.CharField(max_length=20, choices=SOURCE_KINDS, default=CSV_UPLOAD)
    is_active = models.BooleanField(default=True, help_text="Inactive sources are skipped by `manage.py reconcile`.")
    column_mapping = models.JSONField(
        default=dict,
        blank=True,
        help_text="Our field -> the report's column, where it differs from the partner's parameter mapping "
        "(which is used for every other field).",
    )
    base_url = models.URLField(
        max_length=300, blank=True, default="", help_text="API sources: e.g. https://api.involve.asia/api"
    )
    # Kept in clear because the API needs them; never shown, logged or stored with a run.
    api_key = models.CharField(max_length=200, blank=True, default="")
    api_secret = models.CharField(max_length=200, blank=True, default="")
    preferred_currency = models.CharField(
        max_length=3, blank=True, default="", help_text="API sources: filters[preferred_currency], e.g. USD."
    )
    page_size = models.PositiveIntegerField(
        default=100,
        validators=[MinValueValidator(1), MaxValueValidator(PAGE_SIZE_LIMIT)],
        help_text="API sources: records per page (InvolveAsia: at most 100).",
    )
    requests_per_minute = models.PositiveIntegerField(
        default=60,
        validators=[MinValueValidator(1), MaxValueValidator(600)],
        help_text="API sources: the most requests a run sends in any minute, authentication included "
        "(InvolveAsia allows 60 per account).",
    )
    timeout_seconds = models.FloatField(
        default=30.0, validators=[MinValueValidator(0.05)], help_text="API sources: per request (connect and read)."
    )
    report_timezone = models.CharField(
        max_length=64,
        blank=True,
        default="",
        validators=[timezone_validate],
        help_text="The time zone of the report's days and times, e.g. Asia/Kuala_Lumpur (GMT+8). Empty: the "
        "network's own (InvolveAsia: GMT+8), or the partner's for a CSV.",
    )
    # Automatic runs, by the background worker.
    schedule_daily = models.BooleanField(
        default=False, help_text="Reconcile every day at the time below, without anyone starting it."
    )
    schedule_at = models.TimeField(
        default=datetime.time(6, 0), help_text="When the daily run starts, in the partner's time zone."
    )
    schedule_days = models.PositiveSmallIntegerField(
        default=7,
        validators=[MinValueValidator(1), MaxValueValidator(366)],
        help_text="How many days a daily run compares, ending today (the partner's days).",
    )
    auto_record_missing = models.BooleanField(
        default=False,
        help_text="Record missing conversions automatically: after each automatic run, the conversions the "
        "report has and we never received are recorded (and forwarded) as if their postbacks had arrived.",
    )
    scheduled_through = models.DateField(
        null=True, blank=True, help_text="The last partner day a daily run was queued for."
    )
    queued_at = models.DateTimeField(
        null=True, blank=True, help_text="Set while a run of this source waits for the background worker."
    )
    # The last run's outcome, for metrics and the list (a summary; the run is in the partner's database).
    last_run_at = models.DateTimeField(null=True, blank=True)
    last_run_counts = models.JSONField(default=dict, blank=True)
    last_run_error = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "report_sources"
        ordering = ["partner_id", "name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.get_kind_display()})"

    @property
    def is_api(self) -> bool:
        return self.kind in API_KINDS

    @property
    def has_credentials(self) -> bool:
        return bool(self.api_key and self.api_secret)

    @property
    def report_zone_name(self) -> str:
        """The time zone the report is in: the source's, the network's, or the partner's."""
        return self.report_timezone or REPORT_TIMEZONES.get(self.kind) or self.partner.timezone

    def clean(self) -> None:
        errors: dict[str, str] = {}
        mapping_error = parameter_mapping_error(self.column_mapping)
        if mapping_error:
            errors["column_mapping"] = mapping_error.replace("parameter name", "column name")
        if self.is_api and not self.base_url:
            errors["base_url"] = "An API source needs its base URL, e.g. https://api.involve.asia/api"
        page_max = API_PAGE_SIZE_MAX.get(self.kind)
        if page_max and self.page_size and self.page_size > page_max:
            errors["page_size"] = f"{self.get_kind_display()} answers at most {page_max} records per page."
        rate_max = API_REQUESTS_PER_MINUTE.get(self.kind)
        if rate_max and self.requests_per_minute and self.requests_per_minute > rate_max:
            errors["requests_per_minute"] = (
                f"{self.get_kind_display()} allows at most {rate_max} requests per minute per account."
            )
        if self.schedule_daily and not self.is_api:
            errors["schedule_daily"] = "Only an API source can run by itself: a CSV report has to be uploaded."
        if errors:
            raise ValidationError(errors)


class ReconciliationRun(models.Model):
    """One comparison of a partner's report with its originals, in the partner's database."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    STATES = [(QUEUED, "queued"), (RUNNING, "running"), (DONE, "done"), (FAILED, "failed")]
    # Who started it.
    BY_ADMIN = "admin"
    BY_SCHEDULE = "schedule"
    BY_COMMAND = "command"
    TRIGGERS = [(BY_ADMIN, "the admin"), (BY_SCHEDULE, "the daily schedule"), (BY_COMMAND, "manage.py reconcile")]

    partner_id = models.BigIntegerField()
    source_id = models.BigIntegerField(null=True, blank=True, help_text="The ReportSource (in `default`).")
    source_name = models.CharField(max_length=100, blank=True, default="")
    date_from = models.DateField(help_text="First day, in the partner's time zone (by conversion time).")
    date_to = models.DateField(help_text="Last day, included.")
    mapping = models.JSONField(default=dict, blank=True, help_text="Our field -> the report's column, as read.")
    state = models.CharField(max_length=10, choices=STATES, default=RUNNING)
    trigger = models.CharField(max_length=10, choices=TRIGGERS, default=BY_ADMIN)
    requested_by = models.CharField(max_length=150, blank=True, default="", help_text="The admin user, if any.")
    record_missing = models.BooleanField(
        default=False, help_text="Record the missing conversions once the run is done (automatic recovery)."
    )
    worker = models.CharField(max_length=100, blank=True, default="", help_text="The worker running it.")
    upload_name = models.CharField(max_length=255, blank=True, default="", help_text="The uploaded file's name.")
    upload_bytes = models.BigIntegerField(default=0, help_text="The uploaded file's size.")
    pages_read = models.PositiveIntegerField(default=0, help_text="API pages read so far.")
    rows_read = models.PositiveIntegerField(default=0, help_text="Report rows compared so far.")
    error = models.TextField(blank=True, default="")
    counts = models.JSONField(default=dict, blank=True, help_text="Rows by kind.")
    report_rows = models.PositiveIntegerField(default=0)
    recorded = models.PositiveIntegerField(default=0, help_text="Missing conversions recorded from the report.")
    applied = models.PositiveIntegerField(default=0, help_text="Report statuses and amounts applied.")
    started_at = models.DateTimeField(default=timezone.now)
    progress_at = models.DateTimeField(
        null=True, blank=True, help_text="When a running run last stored a batch: its sign of life."
    )
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "reconciliation_runs"
        ordering = ["-started_at", "-id"]

    def __str__(self) -> str:
        return f"run #{self.pk} {self.date_from}..{self.date_to} ({self.state})"

    @property
    def discrepancies(self) -> int:
        return sum(self.counts.get(kind, 0) for kind in DISCREPANCY_KINDS)


class ReconciliationRow(models.Model):
    """One conversion_id of a run: the report's values against ours, and what was done about it."""

    run = models.ForeignKey(ReconciliationRun, on_delete=models.CASCADE, related_name="rows", db_constraint=False)
    conversion_id = models.CharField(max_length=50)
    kind = models.CharField(max_length=20, choices=ROW_KINDS)
    # Discrepancies sort before the matched rows (0..4 by ROW_KINDS order, matched 5).
    rank = models.PositiveSmallIntegerField()
    differences = models.JSONField(default=dict, blank=True, help_text="field -> [ours, the report's].")
    conversion_pk = models.BigIntegerField(null=True, blank=True, help_text="Our original's id, when there is one.")
    conversion_datetime = models.DateTimeField(null=True, blank=True)
    status = models.CharField(max_length=16, choices=STATUS_CHOICES, null=True, blank=True)
    usd_sale_amount = models.DecimalField(max_digits=15, decimal_places=2, null=True, blank=True)
    usd_earning = models.DecimalField(max_digits=15, decimal_places=2, null=True, blank=True)
    currency = models.CharField(max_length=3, null=True, blank=True)
    report_line = models.PositiveIntegerField(null=True, blank=True, help_text="Line (CSV) or record number (API).")
    report_data = models.JSONField(default=dict, blank=True, help_text="The report's row as read.")
    action = models.CharField(max_length=20, blank=True, default="", help_text="What recovery did with this row.")
    action_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "reconciliation_rows"
        ordering = ["rank", "id"]
        constraints = [
            models.UniqueConstraint(fields=["run", "conversion_id"], name="one_row_per_run_conversion"),
        ]
        indexes = [models.Index(fields=["run", "rank", "id"], name="run_rows_discrepancies_first")]

    def __str__(self) -> str:
        return f"{self.conversion_id}: {self.kind}"


class ReportUpload(models.Model):
    """A CSV report uploaded for a queued run, in pieces, until the worker has read it.

    Kept in the partner's database (not on the web server's disk), so the background
    worker reads it wherever it runs; deleted when the run ends.
    """

    CHUNK_BYTES = 1 << 20

    run = models.ForeignKey(ReconciliationRun, on_delete=models.CASCADE, related_name="+", db_constraint=False)
    seq = models.PositiveIntegerField()
    data = models.BinaryField()

    class Meta:
        db_table = "reconciliation_uploads"
        constraints = [models.UniqueConstraint(fields=["run", "seq"], name="one_upload_piece_per_seq")]

    def __str__(self) -> str:
        return f"run #{self.run_id} upload piece {self.seq}"
