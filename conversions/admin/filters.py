"""The conversions list's own filters: none of them lists its choices with a query."""

import datetime

from django.contrib import admin
from django.contrib.admin.options import IncorrectLookupParameters
from django.utils import timezone

from conversions.admin.base import TextInputFilter


class OfferFilter(TextInputFilter):
    title = "offer id"
    parameter_name = "offer_id"
    field_name = "offer_id"


class CurrencyFilter(TextInputFilter):
    title = "currency"
    parameter_name = "currency"
    field_name = "currency"

    def queryset(self, request, queryset):
        value = (self.value() or "").strip().upper()
        return queryset.filter(currency=value) if value else None


class InvalidFilter(admin.SimpleListFilter):
    """Invalid postbacks (rows stored with a processing_error), or the valid ones.

    Not the network's status "rejected" (a sale the network turned down): that is the
    status filter. `?has_error=invalid`; bookmarks of before the rename say `yes` or
    `rejected`, and still list the invalid ones.
    """

    title = "validity"
    parameter_name = "has_error"
    INVALID, VALID = "invalid", "no"
    ALIASES = {"yes": INVALID, "rejected": INVALID}

    def value(self) -> str | None:
        value = super().value()
        return self.ALIASES.get(value, value)

    def lookups(self, request, model_admin):
        return ((self.INVALID, "Invalid (has an error)"), (self.VALID, "Valid"))

    def queryset(self, request, queryset):
        if self.value() == self.INVALID:
            return queryset.filter(processing_error__isnull=False)
        if self.value() == self.VALID:
            return queryset.filter(processing_error__isnull=True)
        return None


class DateRangeFilter(admin.FieldListFilter):
    """From/to dates (inclusive, in the site's time zone) on a datetime column."""

    template = "admin/conversions/date_range_filter.html"

    def __init__(self, field, request, params, model, model_admin, field_path):
        self.lookup_from = f"{field_path}__range_from"
        self.lookup_to = f"{field_path}__range_to"
        super().__init__(field, request, params, model, model_admin, field_path)
        self.bounds = {name: self._date(name) for name in (self.lookup_from, self.lookup_to)}

    def _date(self, name: str) -> datetime.date | None:
        values = self.used_parameters.get(name) or []
        value = (values[-1] if isinstance(values, list) else values).strip() if values else ""
        if not value:
            return None
        try:
            return datetime.date.fromisoformat(value)
        except ValueError:
            raise IncorrectLookupParameters(f"{name}: '{value}' is not a date (YYYY-MM-DD)") from None

    def expected_parameters(self) -> list[str]:
        return [self.lookup_from, self.lookup_to]

    def has_output(self) -> bool:
        return True

    def queryset(self, request, queryset):
        start, end = self.bounds[self.lookup_from], self.bounds[self.lookup_to]
        if start:
            queryset = queryset.filter(**{f"{self.field_path}__gte": self._midnight(start)})
        if end:
            queryset = queryset.filter(**{f"{self.field_path}__lt": self._midnight(end + datetime.timedelta(days=1))})
        return queryset

    @staticmethod
    def _midnight(day: datetime.date) -> datetime.datetime:
        return timezone.make_aware(datetime.datetime.combine(day, datetime.time.min))

    def choices(self, changelist):
        yield {
            "from_name": self.lookup_from,
            "to_name": self.lookup_to,
            "from_value": self.bounds[self.lookup_from] or "",
            "to_value": self.bounds[self.lookup_to] or "",
            "hidden": [
                (key, value)
                for key, values in changelist.get_filters_params().items()
                if key not in {self.lookup_from, self.lookup_to, "p"}
                for value in (values if isinstance(values, list) else [values])
            ],
            "clear_query_string": changelist.get_query_string(remove=[self.lookup_from, self.lookup_to, "p"]),
        }
