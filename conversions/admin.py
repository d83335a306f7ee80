"""The conversions admin: analysts browse, filter and export one partner's conversions.

Conversions live in each partner's own database (ids repeat across databases), so the
changelist always names its partner (`?partner=<code>`) and every query goes through
`get_queryset`, which adds `.using(partner.database_alias)`: Django's documented
multi-database admin pattern. Nobody edits, adds or deletes conversions here.
"""

import datetime
import json

from django.contrib import admin, messages
from django.contrib.admin import DateFieldListFilter, SimpleListFilter
from django.contrib.admin.options import IncorrectLookupParameters
from django.core.exceptions import BadRequest, ImproperlyConfigured, PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections, transaction
from django.db.models import Q, QuerySet
from django.db.models.functions import Left, Upper
from django.db.models.lookups import StartsWith
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect, QueryDict, StreamingHttpResponse
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.formats import date_format
from django.utils.functional import cached_property
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

from conversions.dashboard import (
    dashboard_overview_charts,
    dashboard_partner_charts,
    dashboard_status_names,
    dashboard_status_rows,
)
from conversions.exports import conversion_csv_response
from conversions.forms import DashboardForm
from conversions.ingest.dry_run import postback_dry_run
from conversions.ingest.refusals import refusal_counts
from conversions.ingest.reprocess import conversion_reprocess
from conversions.models import ConversionChange, PartnerConversion
from conversions.outcomes import Outcome
from conversions.selectors import conversion_stats, conversion_sub_id_prefixes, partners_stats
from partners.admin import PartnerAdmin, partner_postback_url
from partners.databases import ConfigurationUnavailable, PartnerDatabaseUnavailable, partner_database
from partners.forms import TestPostbackForm
from partners.lifecycle import STATUS_CHOICES
from partners.models import Partner
from partners.selectors import partners_visible_to

PARTNER_PARAM = "partner"
VIEW_CONVERSIONS = "conversions.view_partnerconversion"


# How much of an offer name its search index keeps (migration 0007, kept in step).
OFFER_NAME_INDEXED = 64


def _compact_time(moment: datetime.datetime | None) -> str:
    """`2025-01-15 13:45` in the site's time zone: narrow enough for the list's columns."""
    return timezone.localtime(moment).strftime("%Y-%m-%d %H:%M") if moment else "-"


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


class PartnerChooser(SimpleListFilter):
    """Which partner's database the list shows; kept in every filter link."""

    title = "partner"
    parameter_name = PARTNER_PARAM

    def __init__(self, request, params, model, model_admin):
        self.current = model_admin.partner_for(request)
        super().__init__(request, params, model, model_admin)

    def lookups(self, request, model_admin):
        return [(p.partner_code, str(p)) for p in partners_visible_to(request.user).order_by("partner_code")]

    def queryset(self, request, queryset):
        return None  # the database itself is chosen in get_queryset

    def choices(self, changelist):
        for code, label in self.lookup_choices:
            yield {
                "selected": self.current is not None and self.current.partner_code == code,
                # Switching partner starts from that partner's unfiltered list.
                "query_string": f"?{PARTNER_PARAM}={code}",
                "display": label,
            }


class TextInputFilter(SimpleListFilter):
    """An exact-match text box (no DISTINCT query over millions of rows to list choices)."""

    template = "admin/conversions/text_input_filter.html"
    field_name = ""

    def lookups(self, request, model_admin):
        return ()

    def has_output(self) -> bool:
        return True

    def queryset(self, request, queryset):
        value = (self.value() or "").strip()
        return queryset.filter(**{self.field_name: value}) if value else None

    def choices(self, changelist):
        yield {
            "value": self.value() or "",
            "parameter_name": self.parameter_name,
            "hidden": [
                (key, value)
                for key, value in changelist.get_filters_params().items()
                if key not in {self.parameter_name, "p"}
                for value in (value if isinstance(value, list) else [value])
            ],
            "clear_query_string": changelist.get_query_string(remove=[self.parameter_name, "p"]),
        }


class OfferFilter(TextInputFilter):
    title = "offer id"
    parameter_name = "offer_id"
    field_name = "offer_id"


class StatusFilter(SimpleListFilter):
    title = "status"
    parameter_name = "status"

    def lookups(self, request, model_admin):
        return STATUS_CHOICES

    def queryset(self, request, queryset):
        return queryset.filter(status=self.value()) if self.value() else None


class CurrencyFilter(TextInputFilter):
    title = "currency"
    parameter_name = "currency"
    field_name = "currency"

    def queryset(self, request, queryset):
        value = (self.value() or "").strip().upper()
        return queryset.filter(currency=value) if value else None


class HasErrorFilter(SimpleListFilter):
    title = "has error"
    parameter_name = "has_error"

    def lookups(self, request, model_admin):
        return (("yes", "Rejected (has error)"), ("no", "No error"))

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.filter(processing_error__isnull=False)
        if self.value() == "no":
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


class PartnerDatabaseAdmin(admin.ModelAdmin):
    """An admin of a model that lives in partner databases: the list names its partner
    (`?partner=<code>`) and every query goes to that partner's alias (get_queryset, and the
    change form's transaction)."""

    # --- which partner ----------------------------------------------------------

    def partner_for(self, request: HttpRequest) -> Partner | None:
        """The partner named by ?partner= (also inside _changelist_filters), else the first one."""
        if not hasattr(request, "_conversions_partner"):
            code = request.GET.get(PARTNER_PARAM) or QueryDict(request.GET.get("_changelist_filters", "")).get(
                PARTNER_PARAM
            )
            if code:
                try:
                    Partner._meta.get_field("partner_code").run_validators(code)
                except ValidationError:
                    # Not a code any partner can have (e.g. %00, which PostgreSQL cannot even compare).
                    raise BadRequest(f"partner: {code[:60]!r} is not a partner code") from None
            partners = partners_visible_to(request.user).order_by("-is_active", "partner_code")
            request._conversions_partner = partners.filter(partner_code=code).first() if code else partners.first()
            if code and request._conversions_partner is None:
                # Unknown, or another partner's (PartnerScope): the same answer for both.
                raise Http404(f"There is no partner '{code[:60]}' among yours.")
        return request._conversions_partner

    def partner_alias(self, request: HttpRequest) -> str:
        partner = self.partner_for(request)
        return partner.database_alias if partner is not None else DEFAULT_DB_ALIAS

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        queryset = super().get_queryset(request)
        if self.partner_for(request) is None:
            return queryset.none().using(DEFAULT_DB_ALIAS)
        return queryset.using(self.partner_alias(request))

    def changelist_view(self, request: HttpRequest, extra_context=None):
        code = request.GET.get(PARTNER_PARAM)
        partner = self.partner_for(request)
        if partner is None:
            self.message_user(request, "Add a partner first: its conversions live in its own database.", messages.INFO)
            return HttpResponseRedirect(reverse("admin:partners_partner_changelist"))
        if not code and request.method == "GET":
            # Name the partner in the URL, so every link (filters, rows, exports) keeps it.
            query = request.GET.copy()
            query[PARTNER_PARAM] = partner.partner_code
            return HttpResponseRedirect(f"{request.path}?{query.urlencode()}")
        extra_context = {
            **(extra_context or {}),
            "partner": partner,
            "partners": partners_visible_to(request.user),
            # Ten columns and the filters fit 1400 px only without the app list beside them
            # (the breadcrumbs still lead back).
            "is_nav_sidebar_enabled": False,
        }
        try:
            response = super().changelist_view(request, extra_context)
            if hasattr(response, "render"):
                response.render()
        except (DatabaseError, PartnerDatabaseUnavailable, ImproperlyConfigured) as exc:
            self.message_user(
                request,
                f"The database of partner '{partner.partner_code}' cannot be read: {str(exc).strip()[:200]}",
                messages.ERROR,
            )
            return HttpResponseRedirect(reverse("admin:partners_partner_changelist"))
        return response

    def changeform_view(self, request: HttpRequest, object_id=None, form_url="", extra_context=None):
        # ModelAdmin opens its transaction on router.db_for_write(model), which cannot know
        # the partner; the partner's own alias is the right one.
        try:
            with transaction.atomic(using=self.partner_alias(request)):
                response = self._changeform_view(request, object_id, form_url, extra_context)
                if hasattr(response, "render"):
                    response.render()
                return response
        except (DatabaseError, ImproperlyConfigured) as exc:
            self.message_user(
                request, f"This partner's database cannot be read: {str(exc).strip()[:200]}", messages.ERROR
            )
            return HttpResponseRedirect(reverse("admin:partners_partner_changelist"))


@admin.register(PartnerConversion)
class PartnerConversionAdmin(PartnerDatabaseAdmin):
    # Compact columns, so the list fits 1400 px with both sidebars (CSS in change_list.html).
    list_display = (
        "conversion_id",
        "outcome_label",
        "offer_label",
        "converted_at",
        "usd_sale_amount",
        "usd_earning",
        "sub_id",
        "click_id",
        "status",
        "received_label",
    )
    list_filter = (
        PartnerChooser,
        "is_duplicate",
        "is_processed",
        HasErrorFilter,
        StatusFilter,
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
    actions = ("export_csv", "reprocess_rejected")
    fieldsets = (
        (
            "Conversion",
            {
                "fields": (
                    "conversion_id",
                    "outcome_label",
                    "offer_id",
                    "offer_name",
                    "conversion_datetime",
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
                    "received_at",
                    "created_at",
                    "updated_at",
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
        "created_at",
        "updated_at",
    )

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
        raise PermissionDenied

    # --- columns and detail fields --------------------------------------------------

    @admin.display(description="outcome")
    def outcome_label(self, conversion: PartnerConversion) -> str:
        return conversion.outcome

    @admin.display(description="offer")
    def offer_label(self, conversion: PartnerConversion) -> str:
        name = conversion.offer_name or ""
        shown = name if len(name) <= 40 else name[:39] + "…"
        if conversion.offer_id and shown:
            return format_html(
                '<span title="{}">{}</span> <span class="quiet">#{}</span>', name, shown, conversion.offer_id
            )
        return format_html('<span title="{}">{}</span>', name, shown or conversion.offer_id or "-")

    @admin.display(description="converted", ordering="conversion_datetime")
    def converted_at(self, conversion: PartnerConversion) -> str:
        return _compact_time(conversion.conversion_datetime)

    @admin.display(description="received", ordering="received_at")
    def received_label(self, conversion: PartnerConversion) -> str:
        return _compact_time(conversion.received_at)

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
                    date_format(timezone.localtime(change.received_at), "DATETIME_FORMAT"),
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

    @admin.action(description="Reprocess selected rejected postbacks", permissions=["reprocess"])
    def reprocess_rejected(self, request: HttpRequest, queryset: QuerySet) -> None:
        partner = self.partner_for(request)
        counts = dict.fromkeys(Outcome, 0)
        try:
            for conversion in list(queryset.filter(processing_error__isnull=False).only("pk")):
                counts[conversion_reprocess(partner=partner, conversion=conversion).outcome] += 1
        except (DatabaseError, ConfigurationUnavailable) as exc:
            self.message_user(request, f"Reprocessing stopped: {exc}", messages.ERROR)
        total = sum(counts.values())
        still_rejected = counts[Outcome.REJECTED]
        summary = (
            f"Reprocessed {total} rejected postback(s): {counts[Outcome.SUCCESS]} original, "
            f"{counts[Outcome.DUPLICATE] + counts[Outcome.STALE]} duplicate, {counts[Outcome.UPDATED]} update of "
            f"an original, {still_rejected} still rejected."
        )
        # Logged on the partner: a conversion's admin-log link could not name its database.
        if total:
            self.log_change(request, partner, summary)
        self.message_user(request, summary, messages.SUCCESS if total and not still_rejected else messages.WARNING)


# --- The partner admin, with what needs a partner's conversions ---------------------


def partner_conversions_since(partner: Partner, since: datetime.datetime | None = None) -> int | None:
    """Rows the partner's database received (since `since`), or None when it cannot be read."""
    try:
        with partner_database(partner) as alias:
            rows = PartnerConversion.objects.using(alias).all()
            return (rows.filter(received_at__gte=since) if since else rows).count()
    except (PartnerDatabaseUnavailable, ImproperlyConfigured):  # unreachable, or a URL this build cannot use
        return None


class PartnerWithConversionsAdmin(PartnerAdmin):
    """partners.admin.PartnerAdmin plus today's count, the conversions link, refused
    postbacks, the test postback and, on deletion, how many conversions the database keeps."""

    list_display = (*PartnerAdmin.list_display, "postbacks_today", "conversions_link")
    readonly_fields = (*PartnerAdmin.readonly_fields, "rejections_recent")
    fieldsets = tuple(
        (name, {**options, "fields": (*options["fields"], "rejections_recent")})
        if name == "Security"
        else (name, options)
        for name, options in PartnerAdmin.fieldsets
    )

    @admin.display(description="postbacks today")
    def postbacks_today(self, partner: Partner) -> str:
        midnight = timezone.make_aware(datetime.datetime.combine(timezone.localdate(), datetime.time.min))
        count = partner_conversions_since(partner, midnight)
        return "unavailable" if count is None else f"{count:,}"

    @admin.display(description="see")
    def conversions_link(self, partner: Partner) -> str:
        conversions = reverse("admin:conversions_partnerconversion_changelist") + f"?partner={partner.partner_code}"
        dashboard = reverse("admin:partners_partner_dashboard", args=[partner.pk])
        return format_html('<a href="{}">conversions</a> · <a href="{}">dashboard</a>', conversions, dashboard)

    @admin.display(description="refused postbacks (7 days)")
    def rejections_recent(self, partner: Partner) -> str:
        if not partner.pk:
            return "-"
        try:
            counts = refusal_counts(partner=partner, days=7)
        except PartnerDatabaseUnavailable:
            return "unavailable"
        if not counts:
            return "none"
        return format_html_join(
            mark_safe("<br>"),
            "{}: {} × {} ({})",
            ((c.day, c.count, c.reason, c.http_status) for c in counts),  # noqa: S308
        )

    def get_urls(self):
        view = self.admin_site.admin_view
        return [
            # Before the admin's own `<path:object_id>/` patterns, which would take "dashboard/".
            path("dashboard/", view(self.overview_view), name="partners_partner_overview"),
            path("<path:object_id>/dashboard/", view(self.dashboard_view), name="partners_partner_dashboard"),
            path(
                "<path:object_id>/test-postback/", view(self.test_postback_view), name="partners_partner_test_postback"
            ),
            *super().get_urls(),
        ]

    # --- dashboards ---------------------------------------------------------------------

    def _dashboard_context(self, request: HttpRequest, title: str, form: DashboardForm) -> dict:
        if not request.user.has_perm(VIEW_CONVERSIONS):
            raise PermissionDenied
        return {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": title,
            "form": form,
            "overview_url": reverse("admin:partners_partner_overview"),
        }

    def dashboard_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """One partner's originals, duplicates, rejected postbacks and amounts per day, by status;
        its top offers and sub_id prefixes: charts with their numbers beside them."""
        partner = self.get_object(request, object_id)  # 404 for a partner the user may not see
        form = DashboardForm(request.GET)
        context = self._dashboard_context(request, f"Dashboard: {partner.partner_name}", form)
        context.update(
            original=partner,
            partner=partner,
            conversions_url=reverse("admin:conversions_partnerconversion_changelist")
            + f"?partner={partner.partner_code}",
        )
        if form.is_valid():
            time_range = form.time_range()
            try:
                with partner_database(partner):
                    stats = conversion_stats(partner=partner, time_range=time_range, top=10)
                    prefixes = conversion_sub_id_prefixes(
                        partner=partner, time_range=time_range, length=form.cleaned_data["prefix_length"], top=10
                    )
            except PartnerDatabaseUnavailable as exc:
                context["unavailable"] = exc.reason
            else:
                context.update(
                    stats=stats,
                    prefixes=prefixes,
                    charts=dashboard_partner_charts(stats=stats, prefixes=prefixes),
                    status_names=dashboard_status_names(stats),
                    status_rows=dashboard_status_rows(stats),
                )
        return TemplateResponse(request, "admin/partners/partner/dashboard.html", context)

    def overview_view(self, request: HttpRequest) -> HttpResponse:
        """Every partner the user may see, side by side, for one range."""
        form = DashboardForm(request.GET)
        context = self._dashboard_context(request, "Dashboard: all partners", form)
        if form.is_valid():
            partners = list(partners_visible_to(request.user).order_by("partner_code"))
            results = partners_stats(partners=partners, time_range=form.time_range(), top=0)
            context.update(results=results, charts=dashboard_overview_charts(results=results))
            if results and all(result.stats is not None for result in results):
                context["days"] = [
                    {"day": days[0].day, "partners": days}
                    for days in zip(*(result.stats.days for result in results), strict=True)
                ]
        return TemplateResponse(request, "admin/partners/partner/overview.html", context)

    def change_view(self, request: HttpRequest, object_id: str, form_url: str = "", extra_context=None):
        partner = self.get_object(request, object_id)
        extra_context = dict(extra_context or {})
        if partner is not None:
            extra_context["test_postback_url"] = reverse("admin:partners_partner_test_postback", args=[partner.pk])
            extra_context["dashboard_url"] = reverse("admin:partners_partner_dashboard", args=[partner.pk])
            extra_context["conversions_url"] = (
                reverse("admin:conversions_partnerconversion_changelist") + f"?partner={partner.partner_code}"
            )
        return super().change_view(request, object_id, form_url, extra_context)

    def delete_view(self, request: HttpRequest, object_id: str, extra_context=None):
        partner = self.get_object(request, object_id)
        extra_context = dict(extra_context or {})
        if partner is not None:
            extra_context["kept_conversions"] = partner_conversions_since(partner)
        return super().delete_view(request, object_id, extra_context)

    def test_postback_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """A pasted postback mapped and decided as a real one would be (dry_run.py); nothing stored."""
        partner = self.get_object(request, object_id)
        if not self.has_view_or_change_permission(request, partner):
            raise PermissionDenied
        form = TestPostbackForm(request.POST or None)
        result = postback_dry_run(partner=partner, payload=form.cleaned_data["payload"]) if form.is_valid() else None
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "original": partner,
            "title": f"Test postback: {partner.partner_name}",
            "form": form,
            "result": result,
            "postback_url": partner_postback_url(partner, request),
        }
        return TemplateResponse(request, "admin/partners/partner/test_postback.html", context)


admin.site.unregister(Partner)
admin.site.register(Partner, PartnerWithConversionsAdmin)


# The reconciliation admin builds on PartnerDatabaseAdmin; imported here so the admin finds it.
import conversions.reconciliation.admin  # noqa: E402, F401
