"""The conversions list's own filters: none of them lists its choices with a query."""

import datetime

from django.contrib import admin
from django.contrib.admin.options import IncorrectLookupParameters
from django.utils import timezone

from conversions.admin.base import TextInputFilter
from conversions.models import ORIGINAL


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


class RowsFilter(admin.SimpleListFilter):
    """Which rows the list shows, `?rows=`: originals (the default), duplicates, invalid
    postbacks or all of them; drawn as the toggle above the list.

    A link that filters on the row's kind itself (`is_duplicate__exact=1`, `has_error=invalid`,
    bookmarked before the toggle) lists what it asks for: its default is then all rows.
    """

    title = "rows"
    parameter_name = "rows"
    template = "admin/conversions/partnerconversion/rows_filter.html"  # drawn above the list, not in the sidebar
    is_rows_toggle = True
    ORIGINALS, DUPLICATES, INVALID, ALL = "originals", "duplicates", "invalid", "all"
    CHOICES = ((ORIGINALS, "Originals"), (DUPLICATES, "Duplicates"), (INVALID, "Invalid"), (ALL, "All rows"))
    # The older filters on the row's kind; the toggle's links leave them behind.
    KIND_PARAMETERS = ("is_duplicate__exact", "is_processed__exact", InvalidFilter.parameter_name)

    @classmethod
    def shown(cls, query) -> str:
        """The rows a list with this query string shows (a value it does not take aside)."""
        value = query.get(cls.parameter_name)
        if value in dict(cls.CHOICES):
            return value
        return cls.ALL if any(name in query for name in cls.KIND_PARAMETERS) else cls.ORIGINALS

    def __init__(self, request, params, model, model_admin):
        self.explicit = any(name in params for name in self.KIND_PARAMETERS)
        super().__init__(request, params, model, model_admin)
        value = super().value()
        if value is not None and value not in dict(self.CHOICES):
            choices = ", ".join(code for code, _ in self.CHOICES)
            raise IncorrectLookupParameters(f"rows: '{value[:60]}' is not one of {choices}")

    def value(self) -> str:
        """The rows shown: the one asked for, else originals (all, beside an older kind filter)."""
        return super().value() or (self.ALL if self.explicit else self.ORIGINALS)

    def lookups(self, request, model_admin):
        return self.CHOICES

    def has_output(self) -> bool:
        return True

    def queryset(self, request, queryset):
        value = self.value()
        if value == self.ORIGINALS:
            return queryset.filter(ORIGINAL)
        if value == self.DUPLICATES:
            return queryset.filter(is_duplicate=True, processing_error__isnull=True)
        if value == self.INVALID:
            return queryset.filter(processing_error__isnull=False)
        return queryset

    def choices(self, changelist):
        current = self.value()
        for code, label in self.CHOICES:
            yield {
                "selected": code == current,
                "value": code,
                "query_string": changelist.get_query_string({self.parameter_name: code}, list(self.KIND_PARAMETERS)),
                "display": label,
            }


class DateRangeFilter(admin.FieldListFilter):
    """From/to dates (inclusive, in the site's time zone) on a datetime column, typed as
    YYYY-MM-DD whatever the browser's locale; anything else is a 400 that says why."""

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
            raise IncorrectLookupParameters(f"{name}: '{value[:60]}' is not a date (YYYY-MM-DD)") from None

    def expected_parameters(self) -> list[str]:
        return [self.lookup_from, self.lookup_to]

    def has_output(self) -> bool:
        return True

    def queryset(self, request, queryset):
        start, end = self.bounds[self.lookup_from], self.bounds[self.lookup_to]
        if start:
            queryset = queryset.filter(**{f"{self.field_path}__gte": self._midnight(start)})
        if end and end < datetime.date.max:  # the day after 9999-12-31 cannot be written
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
            # Not "p" (the page is never among the filters): removal is by prefix, it would drop `partner`.
            "clear_query_string": changelist.get_query_string(remove=[self.lookup_from, self.lookup_to]),
        }
