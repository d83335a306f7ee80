"""Admin forms of the conversions app: the dashboard's range."""

from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from django import forms
from django.utils import timezone

from conversions.selectors import SUB_ID_PREFIX_LENGTH, TimeRange

DASHBOARD_DEFAULT_DAYS = 30
DASHBOARD_MAX_DAYS = 366  # as the /stats API


class DashboardForm(forms.Form):
    """Which UTC days the dashboard covers (both ends included), on which time, and how
    many characters of a sub_id make its prefix. Every field has a default."""

    start = forms.DateField(label="From", required=False, widget=forms.DateInput(attrs={"type": "date"}))
    end = forms.DateField(label="To", required=False, widget=forms.DateInput(attrs={"type": "date"}))
    time_field = forms.ChoiceField(
        label="Dates of",
        required=False,
        choices=(("received_at", "receipt (when we received it)"), ("conversion_datetime", "conversion")),
    )
    prefix_length = forms.IntegerField(
        label="sub_id prefix length", required=False, min_value=1, max_value=50, initial=SUB_ID_PREFIX_LENGTH
    )

    def __init__(self, data: Any = None, **kwargs: Any) -> None:
        # Always bound (an empty query means every default); unknown keys are ignored.
        data = data or {}
        super().__init__({key: data[key] for key in self.base_fields if key in data}, **kwargs)

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        if self.errors:
            return cleaned
        today = timezone.now().astimezone(UTC).date()
        end: date = cleaned.get("end") or today
        start: date = cleaned.get("start") or end - timedelta(days=DASHBOARD_DEFAULT_DAYS - 1)
        if start > end:
            raise forms.ValidationError({"end": "must be on or after the 'From' day."})
        if (end - start).days + 1 > DASHBOARD_MAX_DAYS:
            raise forms.ValidationError({"end": f"the range may span at most {DASHBOARD_MAX_DAYS} days."})
        cleaned.update(
            start=start,
            end=end,
            time_field=cleaned.get("time_field") or "received_at",
            prefix_length=cleaned.get("prefix_length") or SUB_ID_PREFIX_LENGTH,
        )
        # The form shows the range it used, defaults included.
        self.data = {**self.data, **{key: str(cleaned[key]) for key in self.base_fields}}
        return cleaned

    def time_range(self) -> TimeRange:
        """The chosen days as a [start, end) range in UTC (call after is_valid())."""
        cleaned = self.cleaned_data
        return TimeRange(
            time_field=cleaned["time_field"],
            start=datetime.combine(cleaned["start"], time.min, tzinfo=UTC),
            end=datetime.combine(cleaned["end"] + timedelta(days=1), time.min, tzinfo=UTC),
        )
