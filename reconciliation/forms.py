"""Admin forms: a report source (write-only credentials) and a run to start."""

import datetime
from typing import Any

from django import forms
from django.core.exceptions import ValidationError

from partners.forms import ParameterMappingField
from reconciliation.models import ReportSource

MAX_RUN_DAYS = 366


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

    def _credential(self, name: str) -> str:
        value = self.cleaned_data.get(name, "").strip()
        return value or getattr(self.instance, name, "")

    def clean_api_key(self) -> str:
        return self._credential("api_key")

    def clean_api_secret(self) -> str:
        return self._credential("api_secret")

    def clean_preferred_currency(self) -> str:
        return self.cleaned_data.get("preferred_currency", "").strip().upper()

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        if cleaned.get("clear_credentials"):
            cleaned["api_key"] = cleaned["api_secret"] = ""
            self.instance.api_key = self.instance.api_secret = ""
        source = ReportSource(kind=cleaned.get("kind") or "")
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
            if end - start > datetime.timedelta(days=MAX_RUN_DAYS - 1):
                raise ValidationError(f"A run covers at most {MAX_RUN_DAYS} days.")
        return cleaned
