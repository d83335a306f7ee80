"""The conversions admin's template tags: one spelling of a moment, the list's row toggle,
and a date hierarchy that costs two index lookups, not a DISTINCT over millions of rows.

Moments are ISO with their time zone named (`2026-12-06 20:13:05 UTC`) on lists and
detail pages alike, whatever the admin's locale formats say.

Django's own date hierarchy lists the years/months/days that have rows with SELECT DISTINCT
date_trunc(...), a full scan of a big partner table on every page view. This one
offers every period between the first and the last matching row (Min/Max, served by
the conversion_time index); a period without rows simply lists nothing.
"""

import calendar
import datetime

from django import template
from django.db.models import Max, Min
from django.utils import formats, timezone
from django.utils.text import capfirst

register = template.Library()

ISO_MOMENT = "%Y-%m-%d %H:%M:%S"


@register.filter
def iso_datetime(moment: datetime.datetime | None, zone: str = "named") -> str:
    """`2026-12-06 20:13:05 UTC` in the site's time zone; `zone="bare"` leaves the zone out
    (for a column whose header names it); "-" for no moment."""
    if not moment:
        return "-"
    local = timezone.localtime(moment)
    return local.strftime(ISO_MOMENT) if zone == "bare" else f"{local.strftime(ISO_MOMENT)} {local.tzname()}"


def time_zone_name() -> str:
    """The site's time zone as iso_datetime names it (`UTC`)."""
    return timezone.localtime(timezone.now()).tzname() or ""


@register.inclusion_tag("admin/conversions/partnerconversion/rows_toggle.html")
def conversion_rows_toggle(cl) -> dict:
    """Originals / duplicates / invalid / all above the list: the choices of its rows filter."""
    for spec in cl.filter_specs:
        if getattr(spec, "is_rows_toggle", False):
            return {"choices": list(spec.choices(cl)), "show": True}
    return {"show": False}


@register.inclusion_tag("admin/date_hierarchy.html")
def conversion_date_hierarchy(cl) -> dict:
    field = cl.date_hierarchy
    if not field:
        return {"show": False}
    year_field, month_field, day_field = (f"{field}__{part}" for part in ("year", "month", "day"))
    try:
        year, month, day = (
            int(cl.params[name]) if cl.params.get(name) else None for name in (year_field, month_field, day_field)
        )
    except ValueError:
        return {"show": False}

    def link(filters: dict) -> str:
        return cl.get_query_string(filters, [f"{field}__"])

    if year and month and day:
        chosen = datetime.date(year, month, day)
        return {
            "show": True,
            "back": {"link": link({year_field: year, month_field: month}), "title": _month_title(chosen)},
            "choices": [{"title": capfirst(formats.date_format(chosen, "MONTH_DAY_FORMAT"))}],
        }
    bounds = cl.queryset.aggregate(first=Min(field), last=Max(field))
    if not bounds["first"]:
        return {"show": False}
    first, last = (timezone.localtime(value).date() for value in (bounds["first"], bounds["last"]))
    if not year and first.year == last.year:
        year = first.year
        if first.month == last.month:
            month = first.month
    if year and month:
        days = [
            datetime.date(year, month, number)
            for number in range(1, calendar.monthrange(year, month)[1] + 1)
            if first <= datetime.date(year, month, number) <= last
        ]
        return {
            "show": True,
            "back": {"link": link({year_field: year}), "title": str(year)},
            "choices": [
                {
                    "link": link({year_field: year, month_field: month, day_field: each.day}),
                    "title": capfirst(formats.date_format(each, "MONTH_DAY_FORMAT")),
                }
                for each in days
            ],
        }
    if year:
        months = [
            datetime.date(year, number, 1)
            for number in range(1, 13)
            if (first.year, first.month) <= (year, number) <= (last.year, last.month)
        ]
        return {
            "show": True,
            "back": {"link": link({}), "title": "All dates"},
            "choices": [
                {"link": link({year_field: year, month_field: each.month}), "title": _month_title(each)}
                for each in months
            ],
        }
    return {
        "show": True,
        "back": None,
        "choices": [
            {"link": link({year_field: number}), "title": str(number)} for number in range(first.year, last.year + 1)
        ],
    }


def _month_title(day: datetime.date) -> str:
    return capfirst(formats.date_format(day, "YEAR_MONTH_FORMAT"))
