"""Admin forms: a report source (write-only credentials) and a run to start."""

import datetime
from typing import Any

from django import forms
from django.core.exceptions import ValidationError

from partners.forms import ParameterMappingField
from reconciliation.models import REPORT_TIMEZONE_LABELS, ReportSource

MAX_RUN_DAYS = 366
EARLIEST_RUN_DAY = datetime.date(2000, 1, 1)


class CredentialInput(forms.PasswordInput):
    """A credential is never rendered back (render_value=False); empty keeps the stored one."""

    def __init__(self) -> None:
        super().__init__(render_value=False, attrs={"autocomplete": "new-password", "size": 40})


class ReportSourceForm(forms.ModelForm):
    """The source form: the column mapping as a table, the API key and secret write-only."""

    column_mapping = ParameterMappingField(
        required=False,
        help_text="Only where the report names a column differently from the partner's parameter mapping: "
        "one of our fields, and the report's column that fills it.",
    )
    base_url = forms.URLField(
        required=False,
        max_length=300,
        assume_scheme="https",
        help_text="API sources: e.g. https://api.involve.asia/api",
    )
    api_key = forms.CharField(required=False, max_length=200, widget=CredentialInput())
    api_secret = forms.CharField(required=False, max_length=200, widget=CredentialInput())
    clear_credentials = forms.BooleanField(required=False, help_text="Remove the stored key and secret.")
    partner_timezone_from_report = forms.BooleanField(
        required=False,
        label="Set the partner's time zone to the report's",
        help_text="The partner's days (runs, the dashboard) and the datetimes it sends without an offset then "
        "follow the network's time zone.",
    )

    class Meta:
        model = ReportSource
        fields = [
            "partner",
            "name",
            "kind",
            "is_active",
            "column_mapping",
            "base_url",
            "api_key",
            "api_secret",
            "preferred_currency",
            "page_size",
            "requests_per_minute",
            "timeout_seconds",
            "report_timezone",
            "schedule_daily",
            "schedule_at",
            "schedule_days",
            "auto_record_missing",
        ]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for name in ("api_key", "api_secret"):
            stored = bool(getattr(self.instance, name))
            self.fields[name].help_text = (
                "Set (never shown again): leave empty to keep it, or type a new one."
                if stored
                else "API sources: as the network's dashboard shows it. Never shown again once saved."
            )

        if "partner_timezone_from_report" in self.fields:  # not for a user who may only look
            self._timezone_fields_explain()

    def _timezone_fields_explain(self) -> None:
        partner = getattr(self.instance, "partner", None) if self.instance.partner_id else None
        zone = self.instance.report_zone_name if partner is not None else ""
        field = self.fields["partner_timezone_from_report"]
        if partner is None:
            field.help_text = "Save the source first: the choice appears when the partner's differs. " + field.help_text
        elif zone == partner.timezone:
            field.widget = forms.HiddenInput()
        else:
            field.label = f"Set the partner's time zone to the report's ({zone})"
            field.help_text = (
                f"The report is in {zone}, the partner's days in {partner.timezone}: a run still compares the "
                "partner's days (the network's days around them are asked for), but conversions near midnight "
                "fall on different days in the two. " + field.help_text
            )
        report_zone = self.fields.get("report_timezone")
        if report_zone is None:
            return
        networks = ", ".join(
            f"{ReportSource(kind=kind).get_kind_display()}: {label}" for kind, label in REPORT_TIMEZONE_LABELS.items()
        )
        report_zone.help_text = (
            "The time zone of the report's days and times (an IANA name). Empty: the network's own "
            f"({networks}), or the partner's for a CSV."
        )

    def save(self, commit: bool = True):
        source = super().save(commit=commit)
        if self.cleaned_data.get("partner_timezone_from_report") and source.partner_id:
            partner = source.partner
            partner.timezone = source.report_zone_name
            partner.save(update_fields=["timezone", "updated_at"])
        return source

    def _credential(self, name: str) -> str:
        value = self.cleaned_data.get(name, "").strip()
        return value or getattr(self.instance, name, "")

    def clean_api_key(self) -> str:
        return self._credential("api_key")

    def clean_api_secret(self) -> str:
        return self._credential("api_secret")

    def clean_preferred_currency(self) -> str:
        currency = self.cleaned_data.get("preferred_currency", "").strip().upper()
        if currency not in ("", "USD"):
            raise ValidationError("Only USD (our USD amounts come from it) or empty (each record in its own currency).")
        return currency

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        if cleaned.get("clear_credentials"):
            cleaned["api_key"] = cleaned["api_secret"] = ""
            self.instance.api_key = self.instance.api_secret = ""
        source = ReportSource(kind=cleaned.get("kind") or "")
        moved = self.instance.pk and cleaned.get("base_url", "") != self.instance.base_url
        if moved and source.is_api and self.instance.has_credentials and not cleaned.get("clear_credentials"):
            # The stored key and secret are never sent to an address they were not typed for.
            for name in ("api_key", "api_secret"):
                if not self.data.get(name, "").strip():
                    self.add_error(
                        name, "The base URL changed: type the key and secret again (they are sent to that address)."
                    )
        if source.is_api and not cleaned.get("clear_credentials"):
            missing = [name for name in ("api_key", "api_secret") if not cleaned.get(name)]
            for name in missing:
                self.add_error(name, "An API source needs its key and secret.")
        return cleaned


class RunStartForm(forms.Form):
    """A run of one source: the partner's days, and the report file for a CSV source."""

    date_from = forms.DateField(widget=forms.DateInput(attrs={"type": "date"}))
    date_to = forms.DateField(widget=forms.DateInput(attrs={"type": "date"}))
    report = forms.FileField(
        required=False, help_text="The network's CSV report: UTF-8 (with or without BOM), comma or semicolon."
    )

    def __init__(self, *args: Any, source: ReportSource, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.source = source
        if source.is_api:
            del self.fields["report"]
        else:
            self.fields["report"].required = True

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        start, end = cleaned.get("date_from"), cleaned.get("date_to")
        if start and end:
            if end < start:
                raise ValidationError("The last day comes before the first.")
            tomorrow = self.source.partner.local_now().date() + datetime.timedelta(days=1)
            if start < EARLIEST_RUN_DAY or end > tomorrow:
                raise ValidationError(
                    f"Days from {EARLIEST_RUN_DAY} to {tomorrow} (tomorrow in the partner's time zone) only."
                )
            if end - start > datetime.timedelta(days=MAX_RUN_DAYS - 1):
                raise ValidationError(f"A run covers at most {MAX_RUN_DAYS} days.")
        return cleaned
