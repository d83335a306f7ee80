"""Report sources (configuration, in `default`) and reconciliation runs (partner databases)."""

from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models
from django.utils import timezone

from partners.lifecycle import STATUS_CHOICES
from partners.models import parameter_mapping_error

CSV_UPLOAD = "csv"
INVOLVE_ASIA_API = "involve_asia"
SOURCE_KINDS = [(CSV_UPLOAD, "CSV upload"), (INVOLVE_ASIA_API, "InvolveAsia API")]
API_KINDS = frozenset({INVOLVE_ASIA_API})

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
    page_size = models.PositiveIntegerField(default=100, validators=[MinValueValidator(1)])
    requests_per_second = models.FloatField(
        default=2.0,
        validators=[MinValueValidator(0.01)],
        help_text="API sources: the most requests a run sends per second, so it never hammers the network.",
    )
    timeout_seconds = models.FloatField(
        default=30.0, validators=[MinValueValidator(0.05)], help_text="API sources: per request (connect and read)."
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

    def clean(self) -> None:
        errors: dict[str, str] = {}
        mapping_error = parameter_mapping_error(self.column_mapping)
        if mapping_error:
            errors["column_mapping"] = mapping_error.replace("parameter name", "column name")
        if self.is_api and not self.base_url:
            errors["base_url"] = "An API source needs its base URL, e.g. https://api.involve.asia/api"
        if errors:
            raise ValidationError(errors)


class ReconciliationRun(models.Model):
    """One comparison of a partner's report with its originals, in the partner's database."""

    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    STATES = [(RUNNING, "running"), (DONE, "done"), (FAILED, "failed")]

    partner_id = models.BigIntegerField()
    source_id = models.BigIntegerField(null=True, blank=True, help_text="The ReportSource (in `default`).")
    source_name = models.CharField(max_length=100, blank=True, default="")
    date_from = models.DateField(help_text="First day, in the partner's time zone (by conversion time).")
    date_to = models.DateField(help_text="Last day, included.")
    mapping = models.JSONField(default=dict, blank=True, help_text="Our field -> the report's column, as read.")
    state = models.CharField(max_length=10, choices=STATES, default=RUNNING)
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
