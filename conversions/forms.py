"""Admin forms of the conversions app: the dashboards' ranges and choices."""

from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from django import forms
from django.utils import timezone

from conversions.selectors import SUB_ID_PREFIX_LENGTH, TimeRange

DASHBOARD_DEFAULT_DAYS = 30
DASHBOARD_MAX_DAYS = 366  # as the /stats API
EARLIEST, LATEST = date(1971, 1, 1), date(2998, 12, 31)  # inside the API's 1970..2999, a previous period too


# Conversion time by default: a batch of late postbacks lands on the days it happened on (as
# the networks' and publishers' reports count it), not as one bar on the day it arrived.
DASHBOARD_DEFAULT_TIME_FIELD = "conversion_datetime"
OVERVIEW_TOP_CHOICES = (5, 10, 15, 20)


class RangeForm(forms.Form):
    """Which UTC days a dashboard covers (both ends included), and on which time. Every field
    has a default; a bad value is an error beside its box, never an error page."""

    start = forms.DateField(label="From", required=False, widget=forms.DateInput(attrs={"type": "date"}))
    end = forms.DateField(label="To", required=False, widget=forms.DateInput(attrs={"type": "date"}))
    time_field = forms.ChoiceField(
        label="Dates of",
        required=False,
        choices=(("conversion_datetime", "conversion"), ("received_at", "receipt (when we received it)")),
    )
    defaults: dict[str, Any] = {}

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
        for name, day in (("start", start), ("end", end)):
            if not EARLIEST <= day <= LATEST:
                raise forms.ValidationError({name: f"must be from {EARLIEST} to {LATEST}."})
        if start > end:
            raise forms.ValidationError({"end": "must be on or after the 'From' day."})
        if (end - start).days + 1 > DASHBOARD_MAX_DAYS:
            raise forms.ValidationError({"end": f"the range may span at most {DASHBOARD_MAX_DAYS} days."})
        cleaned.update(start=start, end=end, time_field=cleaned.get("time_field") or DASHBOARD_DEFAULT_TIME_FIELD)
        cleaned.update({name: cleaned.get(name) or default for name, default in self.defaults.items()})
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


class DashboardForm(RangeForm):
    """One partner's dashboard: the range, and how many characters of a sub_id make its prefix."""

    prefix_length = forms.IntegerField(
        label="sub_id prefix length", required=False, min_value=1, max_value=50, initial=SUB_ID_PREFIX_LENGTH
    )
    # Publishers' payouts are each row's rule applied: a read of every row in the range (about
    # 3 s a 30-day range of 1,000,000 rows), so they are there when asked for.
    publishers = forms.BooleanField(label="by publisher (payouts, margin)", required=False)
    defaults = {"prefix_length": SUB_ID_PREFIX_LENGTH}


class OverviewForm(RangeForm):
    """The all-partners overview: the range, how many partners the charts show one by one
    (the rest are one `others` series) and the order of partners."""

    top = forms.TypedChoiceField(
        label="Partners in charts",
        required=False,
        coerce=int,
        choices=[(n, str(n)) for n in OVERVIEW_TOP_CHOICES],
        initial=10,
    )
    sort = forms.ChoiceField(
        label="Sort by",
        required=False,
        choices=(
            ("approved", "approved revenue"),
            ("open", "approved + pending revenue"),
            ("earnings", "earnings"),
            ("originals", "originals"),
            ("rejection", "rejection rate"),
            ("name", "name"),
        ),
    )
    defaults = {"top": 10, "sort": "approved"}
