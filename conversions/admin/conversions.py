"""The conversions list and a conversion's page: analysts browse, filter and export one
partner's conversions; account managers reprocess invalid postbacks. Nobody edits, adds
or deletes conversions here.

Another app adds a section to a conversion's page with `conversion_admin_extend()`
(publishers: the postbacks sent for it); conversions import none of them.
"""

import datetime
import json
from collections.abc import Callable
from dataclasses import dataclass

from django.contrib import admin, messages
from django.contrib.admin import DateFieldListFilter
from django.contrib.admin.options import IncorrectLookupParameters
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db import connections
from django.db.models import Q, QuerySet
from django.db.models.functions import Left, Upper
from django.db.models.lookups import StartsWith
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, StreamingHttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.functional import cached_property, lazy
from django.utils.html import format_html, format_html_join

from conversions.admin.base import PARTNER_PARAM, PartnerChooser, PartnerDatabaseAdmin, choice_filter
from conversions.admin.filters import CurrencyFilter, DateRangeFilter, InvalidFilter, OfferFilter, RowsFilter
from conversions.exports import XlsxTooLarge, conversion_csv_response, conversion_xlsx_response
from conversions.models import ConversionChange, PartnerConversion
from conversions.outcomes import Outcome, RowKind
from conversions.services import conversions_reprocess
from conversions.templatetags.conversion_admin import iso_datetime, time_zone_name
from partners.lifecycle import STATUS_CHOICES, STATUSES
from partners.models import Partner

# How much of an offer name its search index keeps (migration 0007, kept in step).
OFFER_NAME_INDEXED = 64


def _list_time(moment: datetime.datetime | None) -> str:
    """`2025-01-15 13:45:10`, the day above the time in a narrow column (its header names the
    zone; the title the whole moment)."""
    if not moment:
        return "-"
    day, time = iso_datetime(moment, "bare").split(" ")
    return format_html(
        '<span title="{}"><span class="pc-day">{}</span> <span class="pc-time">{}</span></span>',
        iso_datetime(moment),
        day,
        time,
    )


def _zoned(label: str):
    """A column header naming the site's time zone (`received (UTC)`), read when drawn."""
    return lazy(lambda: f"{label} ({time_zone_name()})", str)()


def _full(value: str | None) -> str:
    """A text cell cut to its column's width by CSS (nowrap, ellipsis), whole in its title."""
    if not value:
        return "-"
    return format_html('<span title="{}">{}</span>', value, value)


def _amount(value) -> str:
    return "-" if value is None else f"{value:,.2f}"


# Badges (conversions/static/conversions/admin.css): a row's kind and the network's status
# are drawn apart, an invalid postback amber, a sale the network rejected red.


def outcome_badge(kind: RowKind) -> str:
    """A row's kind as people read it: original, duplicate or invalid."""
    return format_html('<span class="pc-badge pc-outcome-{}">{}</span>', kind.label, kind.label)


def status_badge(status: str | None) -> str:
    """The status the network gave the sale (pending, approved, rejected, paid)."""
    if not status:
        return "-"
    tone = status if status in STATUSES else "other"
    return format_html('<span class="pc-badge pc-status-{}">{}</span>', tone, status)


class _FilterRefused(Exception):
    """A filter value the list cannot use (a day that is not one): a 400 that says which."""


class CappedCountPaginator(Paginator):
    """Counts at most CAP matching rows instead of the whole table on every page view.

    Unfiltered PostgreSQL lists use the planner's row estimate for the page links;
    filtered lists beyond CAP say "more than CAP" and show the newest.
    """

    CAP = 10_000

    @cached_property
    def count(self) -> int:
        queryset = self.object_list
        capped = queryset[: self.CAP + 1].count()
        self.exact = capped <= self.CAP
        if self.exact:
            return capped
        estimate = self._table_estimate(queryset) if not queryset.query.where else None
        self.estimated = estimate is not None
        return max(estimate or 0, self.CAP)

    exact = True
    estimated = False

    @staticmethod
    def _table_estimate(queryset: QuerySet) -> int | None:
        connection = connections[queryset.db]
        if connection.vendor != "postgresql":
            return None
        with connection.cursor() as cursor:
            table = queryset.model._meta.db_table
            cursor.execute("SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass", [table])
            row = cursor.fetchone()
        return row[0] if row and row[0] > 0 else None


# --- what other apps add to a conversion's page ------------------------------------------


@dataclass(frozen=True)
class ConversionSection:
    """A section of a conversion's page: read-only `admin.display` functions of the conversion."""

    title: str
    fields: tuple[Callable[[PartnerConversion], str], ...]


@dataclass(frozen=True)
class ConversionAdminExtension:
    """What an app built on conversions adds to the one conversions admin."""

    sections: tuple[ConversionSection, ...] = ()  # after the page's own sections


conversion_admin_extensions: dict[str, ConversionAdminExtension] = {}


def conversion_admin_extend(*, app_label: str, extension: ConversionAdminExtension) -> None:
    """Add an app's part of the conversions admin (one per app: a second call replaces the first)."""
    conversion_admin_extensions[app_label] = extension


def _extension_sections() -> list[ConversionSection]:
    return [section for extension in conversion_admin_extensions.values() for section in extension.sections]


@admin.register(PartnerConversion)
class PartnerConversionAdmin(PartnerDatabaseAdmin):
    # The columns of each view of the toggle (get_list_display). The table is laid out to its
    # width (change_list.html): dates and amounts get what they need, text columns share the
    # rest and cut what does not fit with an ellipsis (the whole value in the cell's title).
    list_display = (
        "conversion_id",
        "offer_label",
        "converted_at",
        "sale_label",
        "earning_label",
        "sub_id_label",
        "click_id_label",
        "status_label",
        "received_label",
    )
    # Every kind of row: which one it is, and the error of an invalid one.
    list_display_all = (
        "conversion_id",
        "outcome_cell",
        "offer_label",
        "converted_at",
        "sale_label",
        "earning_label",
        "sub_id_label",
        "click_id_label",
        "status_label",
        "received_label",
    )
    # Invalid postbacks: the error first; amounts and status are rarely what made them invalid.
    list_display_invalid = (
        "conversion_id",
        "error_label",
        "offer_label",
        "converted_at",
        "sub_id_label",
        "click_id_label",
        "received_label",
    )
    list_filter = (
        PartnerChooser,
        RowsFilter,  # before the filters it makes room for: it reads whether they are used
        "is_duplicate",
        "is_processed",
        InvalidFilter,
        choice_filter("status", STATUS_CHOICES),
        CurrencyFilter,
        OfferFilter,
        ("conversion_datetime", DateRangeFilter),
        ("conversion_datetime", DateFieldListFilter),
        ("received_at", DateRangeFilter),
        ("received_at", DateFieldListFilter),
    )
    # conversion_id whole, any case; offer name's start, any case; click_id, sub_id,
    # media_id by prefix (see get_search_results).
    search_fields = ("=conversion_id", "^offer_name", "^click_id", "^sub_id", "^media_id")
    search_help_text = (
        "conversion_id (whole, any case), the start of an offer name (any case), or the start of a "
        "click_id, sub_id or media_id"
    )
    date_hierarchy = "conversion_datetime"
    # Sorting other columns would sort millions of rows; these two are indexed.
    sortable_by = ("converted_at", "received_label")
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER  # facet counts would COUNT every choice over the whole table
    paginator = CappedCountPaginator
    list_per_page = 50
    actions = ("export_csv", "export_xlsx", "reprocess_rejected")
    fieldsets = (
        (
            "Conversion",
            {
                "fields": (
                    "conversion_id",
                    "outcome_label",
                    "offer_id",
                    "offer_name",
                    "conversion_datetime_iso",
                    "usd_sale_amount",
                    "usd_earning",
                    "status",
                    "status_raw",
                    "currency",
                    "sale_amount_local",
                    "payout_local",
                )
            },
        ),
        ("History", {"fields": ("history_table",)}),
        ("Attribution", {"fields": ("sub_id", "media_id", "click_id")}),
        (
            "Processing",
            {
                "fields": (
                    "partner_label",
                    "is_processed",
                    "is_duplicate",
                    "duplicate_of_link",
                    "processing_error",
                    "received_at_iso",
                    "created_at_iso",
                    "updated_at_iso",
                )
            },
        ),
        ("Request", {"fields": ("raw_data_pretty", "request_headers_pretty", "request_ip")}),
    )
    readonly_fields = (
        "history_table",
        "outcome_label",
        "partner_label",
        "duplicate_of_link",
        "raw_data_pretty",
        "request_headers_pretty",
        "conversion_datetime_iso",
        "received_at_iso",
        "created_at_iso",
        "updated_at_iso",
    )

    class Media:
        css = {"all": ("conversions/admin.css",)}
        js = ("conversions/admin_list.js",)

    def get_list_display(self, request: HttpRequest):
        shown = RowsFilter.shown(request.GET)
        if shown == RowsFilter.INVALID:
            return self.list_display_invalid
        if shown == RowsFilter.ALL:
            return self.list_display_all
        return self.list_display

    def changelist_view(self, request: HttpRequest, extra_context=None) -> HttpResponse:
        try:
            return super().changelist_view(request, extra_context)
        except _FilterRefused as refused:
            # Django would redirect to `?e=1`, dropping the partner and saying nothing.
            return TemplateResponse(
                request,
                "admin/conversions/partnerconversion/bad_filter.html",
                {
                    **self.admin_site.each_context(request),
                    "opts": self.opts,
                    "title": "This filter cannot be used",
                    "reason": str(refused),
                    "partner": self.partner_for(request),
                },
                status=400,
            )

    def get_changelist_instance(self, request: HttpRequest):
        try:
            return super().get_changelist_instance(request)
        except IncorrectLookupParameters as exc:
            raise _FilterRefused(str(exc) or "a filter's value is not one it takes") from exc

    def get_fieldsets(self, request: HttpRequest, obj: PartnerConversion | None = None):
        added = ((section.title, {"fields": section.fields}) for section in _extension_sections())
        return (*super().get_fieldsets(request, obj), *added)

    def get_readonly_fields(self, request: HttpRequest, obj: PartnerConversion | None = None):
        added = (field for section in _extension_sections() for field in section.fields)
        return (*super().get_readonly_fields(request, obj), *added)

    def get_search_results(self, request: HttpRequest, queryset: QuerySet, search_term: str):
        # Every branch has its index on PostgreSQL: UPPER(conversion_id) and
        # UPPER(LEFT(offer_name, 64)) (migration 0007), the *_newest pattern indexes.
        term = search_term.strip()
        if not term:
            return queryset, False
        offer_name = StartsWith(Upper(Left("offer_name", OFFER_NAME_INDEXED)), term[:OFFER_NAME_INDEXED].upper())
        if len(term) > OFFER_NAME_INDEXED:
            offer_name &= Q(offer_name__istartswith=term)
        match = (
            Q(conversion_id__iexact=term)
            | Q(offer_name)
            | Q(click_id__startswith=term)
            | Q(sub_id__startswith=term)
            | Q(media_id__startswith=term)
        )
        return queryset.filter(match), False

    # --- read-only for everybody ----------------------------------------------------

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_reprocess_permission(self, request: HttpRequest) -> bool:
        # Reprocessing follows the partner's mapping, which account managers own.
        return request.user.has_perm("partners.change_partner")

    # --- views --------------------------------------------------------------------

    def delete_view(self, request: HttpRequest, object_id: str, extra_context=None):
        self.partner_for(request)  # another partner's (or an unknown) ?partner=: 404, as everywhere
        raise PermissionDenied

    # --- columns and detail fields --------------------------------------------------

    @admin.display(description="outcome")
    def outcome_label(self, conversion: PartnerConversion) -> str:
        return outcome_badge(conversion.outcome)

    @admin.display(description="outcome")
    def outcome_cell(self, conversion: PartnerConversion) -> str:
        if conversion.processing_error is None:
            return outcome_badge(conversion.outcome)
        return format_html(
            '{} <span class="pc-error" title="{}">{}</span>',
            outcome_badge(conversion.outcome),
            conversion.processing_error,
            conversion.processing_error,
        )

    @admin.display(description="error")
    def error_label(self, conversion: PartnerConversion) -> str:
        if conversion.processing_error is None:
            return "-"
        error = conversion.processing_error
        return format_html('<span class="pc-error" title="{}">{}</span>', error, error)

    @admin.display(description="sale $")
    def sale_label(self, conversion: PartnerConversion) -> str:
        return _amount(conversion.usd_sale_amount)

    @admin.display(description="earning $")
    def earning_label(self, conversion: PartnerConversion) -> str:
        return _amount(conversion.usd_earning)

    @admin.display(description="sub_id")
    def sub_id_label(self, conversion: PartnerConversion) -> str:
        return _full(conversion.sub_id)

    @admin.display(description="click_id")
    def click_id_label(self, conversion: PartnerConversion) -> str:
        return _full(conversion.click_id)

    @admin.display(description="conversion datetime")
    def conversion_datetime_iso(self, conversion: PartnerConversion) -> str:
        return iso_datetime(conversion.conversion_datetime)

    @admin.display(description="received at")
    def received_at_iso(self, conversion: PartnerConversion) -> str:
        return iso_datetime(conversion.received_at)

    @admin.display(description="created at")
    def created_at_iso(self, conversion: PartnerConversion) -> str:
        return iso_datetime(conversion.created_at)

    @admin.display(description="updated at")
    def updated_at_iso(self, conversion: PartnerConversion) -> str:
        return iso_datetime(conversion.updated_at)

    @admin.display(description="status")
    def status_label(self, conversion: PartnerConversion) -> str:
        return status_badge(conversion.status)

    @admin.display(description="offer")
    def offer_label(self, conversion: PartnerConversion) -> str:
        name, offer_id = conversion.offer_name or "", conversion.offer_id or ""
        if name and offer_id:
            # The id first: the name's end is what an ellipsis cuts.
            return format_html(
                '<span title="{} (#{})"><span class="quiet">#{}</span> {}</span>', name, offer_id, offer_id, name
            )
        return _full(name or offer_id)

    @admin.display(description=_zoned("converted"), ordering="conversion_datetime")
    def converted_at(self, conversion: PartnerConversion) -> str:
        return _list_time(conversion.conversion_datetime)

    @admin.display(description=_zoned("received"), ordering="received_at")
    def received_label(self, conversion: PartnerConversion) -> str:
        return _list_time(conversion.received_at)

    @admin.display(description="partner")
    def partner_label(self, conversion: PartnerConversion) -> str:
        partner = Partner.objects.filter(pk=conversion.partner_id).first()
        return str(partner) if partner else f"#{conversion.partner_id} (deleted)"

    @admin.display(description="duplicate of")
    def duplicate_of_link(self, conversion: PartnerConversion) -> str:
        if conversion.duplicate_of_id is None:
            return "-"
        partner = Partner.objects.filter(pk=conversion.partner_id).first()
        url = reverse("admin:conversions_partnerconversion_change", args=[conversion.duplicate_of_id])
        code = partner.partner_code if partner else ""
        return format_html('<a href="{}?{}={}">#{}</a>', url, PARTNER_PARAM, code, conversion.duplicate_of_id)

    @admin.display(description="status and amount changes")
    def history_table(self, conversion: PartnerConversion) -> str:
        changes = list(ConversionChange.objects.using(conversion._state.db).filter(conversion_id=conversion.pk))
        if not changes:
            return "No later postback changed this conversion."
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{} &rarr; {}</td><td>{}</td><td>{}</td><td><pre>{}</pre></td></tr>",
            (
                (
                    iso_datetime(change.received_at),
                    change.source,
                    change.from_status or "-",
                    change.to_status or "-",
                    ", ".join(f"{name}: {old} -> {new}" for name, (old, new) in change.changes.items()),
                    "applied" if change.applied else f"not applied ({change.note})",
                    json.dumps(change.raw_data, ensure_ascii=False),
                )
                for change in changes
            ),
        )
        return format_html(
            '<table id="conversion-history"><thead><tr><th>received</th><th>from</th><th>status</th>'
            "<th>changes</th><th>result</th><th>postback</th></tr></thead><tbody>{}</tbody></table>",
            rows,
        )

    @admin.display(description="raw data")
    def raw_data_pretty(self, conversion: PartnerConversion) -> str:
        return format_html("<pre>{}</pre>", json.dumps(conversion.raw_data, ensure_ascii=False, indent=2))

    @admin.display(description="request headers")
    def request_headers_pretty(self, conversion: PartnerConversion) -> str:
        return format_html("<pre>{}</pre>", json.dumps(conversion.request_headers, ensure_ascii=False, indent=2))

    # --- actions ----------------------------------------------------------------------

    @admin.action(description="Export selected conversions as CSV", permissions=["view"])
    def export_csv(self, request: HttpRequest, queryset: QuerySet) -> StreamingHttpResponse:
        # The API's exporter: same columns, spelling and formula neutralisation.
        return conversion_csv_response(queryset, partner=self.partner_for(request))

    @admin.action(description="Export selected conversions as XLSX", permissions=["view"])
    def export_xlsx(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse:
        try:
            return conversion_xlsx_response(queryset, partner=self.partner_for(request))
        except XlsxTooLarge as exc:
            self.message_user(request, f"Not exported: {exc}.", messages.ERROR)
            return HttpResponseRedirect(request.get_full_path())

    # The action's name stays `reprocess_rejected`: it is the value forms post.
    @admin.action(description="Reprocess selected invalid postbacks", permissions=["reprocess"])
    def reprocess_rejected(self, request: HttpRequest, queryset: QuerySet) -> None:
        partner = self.partner_for(request)
        done = conversions_reprocess(partner=partner, conversions=queryset)
        if done.stopped:
            self.message_user(request, f"Reprocessing stopped: {done.stopped}", messages.ERROR)
        counts = done.counts
        still_invalid = counts[Outcome.INVALID]
        summary = (
            f"Reprocessed {done.total} invalid postback(s): {counts[Outcome.SUCCESS]} original, "
            f"{counts[Outcome.DUPLICATE] + counts[Outcome.STALE]} duplicate, {counts[Outcome.UPDATED]} update of "
            f"an original, {still_invalid} still invalid."
        )
        # Logged on the partner: a conversion's admin-log link could not name its database.
        if done.total:
            self.log_change(request, partner, summary)
        self.message_user(request, summary, messages.SUCCESS if done.total and not still_invalid else messages.WARNING)
