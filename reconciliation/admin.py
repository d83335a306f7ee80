"""The reconciliation admin: report sources (configuration), runs and their rows (partner databases).

Sources are edited like any configuration; a source's "Reconcile…" page starts a run
(uploading the CSV for a CSV source). Runs and rows live in the partner's database, so
their lists name the partner like the conversions list does (PartnerDatabaseAdmin).
Rows list discrepancies first; a run's actions record the missing conversions or apply
the report's statuses and amounts; its rows download as CSV.
"""

import datetime

from django.contrib import admin, messages
from django.contrib.admin.options import IncorrectLookupParameters
from django.core.exceptions import BadRequest, PermissionDenied
from django.db import DatabaseError
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect, StreamingHttpResponse
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join

from conversions.admin.base import PARTNER_PARAM, PartnerChooser, PartnerDatabaseAdmin, TextInputFilter, choice_filter
from conversions.exports import csv_lines
from infra.databases import PartnerDatabaseUnavailable
from partners.mapping import CANONICAL_FIELDS
from partners.models import Partner
from partners.selectors import partners_visible_to
from reconciliation.formats import source_preview
from reconciliation.forms import ReportSourceForm, RunStartForm
from reconciliation.models import (
    DISCREPANCY_KINDS,
    ROW_KINDS,
    ReconciliationRow,
    ReconciliationRun,
    ReportSource,
)
from reconciliation.runs import run_queue
from reconciliation.selectors import RUN_EXPORT_COLUMNS, run_rows_export
from reconciliation.services import (
    RecoveryRefused,
    run_missing_record,
    run_report_apply,
)

DEFAULT_RUN_DAYS = 7
RUN_PAGE_REFRESH_SECONDS = 3
# What each kind of row means, in the words the run page uses.
ROW_KIND_EXPLAINED = {
    "missing_here": "The network reports these conversions and we never received their postbacks: "
    "recording them stores them as if the postbacks had arrived, and forwards them to publishers.",
    "missing_there": "We received these conversions and the network's report does not list them "
    "(a rejected test, another account, or a day boundary): ask the network.",
    "status_differs": "The network's status is not ours (e.g. approved there, pending here). Applying the "
    "report moves ours through the status rules; a change that would go backwards is kept in the history only.",
    "amount_differs": "A sale amount or payout differs by more than one cent, in the currency the report "
    "states. Applying the report takes the network's amounts.",
    "currency_differs": "The report states another currency than ours: its amounts are not compared, "
    "and applying the report never changes our currency.",
    "matched": "The same conversion, status and amounts on both sides.",
}
# What recovery did with a row (its "action").
ACTIONS_EXPLAINED = [
    ("recorded", "stored from the report, as its postback would have been"),
    ("duplicate", "a postback arrived meanwhile: nothing new stored"),
    ("updated", "our status or amounts now match the report"),
    ("agrees", "a postback brought the report's values meanwhile: nothing to apply"),
    ("currency kept", "the report states another currency: our currency and its amounts are never rewritten"),
    (
        "stale",
        "the report's status would move ours backwards (e.g. approved -> pending): kept in the "
        "conversion's history only, not applied",
    ),
    ("gone", "the conversion was purged since the run"),
    ("unreadable", "the partner's status mapping changed since the run: start a new run"),
]


def _counts_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{kind.replace('_', ' ')}: {counts.get(kind, 0)}" for kind in DISCREPANCY_KINDS if counts)


def _reason(exc: Exception) -> str:
    """Why a partner's database could not be used, in a line."""
    return exc.reason if isinstance(exc, PartnerDatabaseUnavailable) else str(exc).strip()[:200]


def _run_url(partner: Partner, run_id: int) -> str:
    url = reverse("admin:reconciliation_reconciliationrun_change", args=[run_id])
    return f"{url}?{PARTNER_PARAM}={partner.partner_code}"


def _rows_url(partner: Partner, run_id: int, kind: str | None = None) -> str:
    url = reverse("admin:reconciliation_reconciliationrow_changelist")
    return f"{url}?{PARTNER_PARAM}={partner.partner_code}&run={run_id}" + (f"&kind={kind}" if kind else "")


class VisiblePartnerFilter(admin.SimpleListFilter):
    """ "By partner", naming only the partners the user may see (PartnerScope)."""

    title = "partner"
    parameter_name = "partner__id__exact"

    def lookups(self, request: HttpRequest, model_admin):
        return [(str(pk), code) for pk, code in partners_visible_to(request.user).values_list("pk", "partner_code")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        value = self.value()
        if not value:
            return queryset
        if not value.isdigit():
            raise IncorrectLookupParameters(f"partner: {value[:20]!r} is not a partner id")
        return queryset.filter(partner_id=int(value))


@admin.register(ReportSource)
class ReportSourceAdmin(admin.ModelAdmin):
    form = ReportSourceForm
    list_display = ("name", "partner", "kind", "is_active", "last_run_at", "last_run_summary", "reconcile_link")
    list_filter = ("kind", "is_active", VisiblePartnerFilter)
    search_fields = ("name", "partner__partner_code")
    readonly_fields = ("last_run_at", "last_run_summary", "last_run_error", "scheduled_through")
    fieldsets = (
        (None, {"fields": ("partner", "name", "kind", "is_active")}),
        ("Columns", {"fields": ("column_mapping",)}),
        ("Time zone", {"fields": ("report_timezone", "partner_timezone_from_report")}),
        (
            "API",
            {
                "fields": (
                    "base_url",
                    "api_key",
                    "api_secret",
                    "clear_credentials",
                    "preferred_currency",
                    "page_size",
                    "requests_per_minute",
                    "timeout_seconds",
                )
            },
        ),
        (
            "Daily run (API sources, by the background worker)",
            {"fields": ("schedule_daily", "schedule_at", "schedule_days", "auto_record_missing", "scheduled_through")},
        ),
        ("Last run", {"fields": ("last_run_at", "last_run_summary", "last_run_error")}),
    )

    # A user limited to some partners (PartnerScope) sees and chooses only theirs.
    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).filter(partner__in=partners_visible_to(request.user))

    def get_object(self, request: HttpRequest, object_id: str, from_field=None) -> ReportSource:
        """The source, or a 404 when there is none the user may see: unknown and another
        partner's answer alike (change, delete, history, preview, reconcile)."""
        source = super().get_object(request, object_id, from_field)
        if source is None:
            raise Http404(f"There is no report source {str(object_id)[:20]!r} among yours.")
        return source

    def formfield_for_foreignkey(self, db_field, request: HttpRequest, **kwargs):
        if db_field.name == "partner":
            kwargs["queryset"] = partners_visible_to(request.user)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    @admin.display(description="last run")
    def last_run_summary(self, source: ReportSource) -> str:
        if source.last_run_error:
            return f"failed: {source.last_run_error[:120]}"
        return _counts_text(source.last_run_counts or {}) or "-"

    @admin.display(description="")
    def reconcile_link(self, source: ReportSource) -> str:
        return format_html(
            '<a href="{}">Reconcile…</a>', reverse("admin:reconciliation_reportsource_run", args=[source.pk])
        )

    def get_urls(self):
        run = path(
            "<path:object_id>/reconcile/",
            self.admin_site.admin_view(self.run_view),
            name="reconciliation_reportsource_run",
        )
        preview = path(
            "<path:object_id>/preview/",
            self.admin_site.admin_view(self.preview_view),
            name="reconciliation_reportsource_preview",
        )
        return [run, preview, *super().get_urls()]

    def preview_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """The API's first records of the last days, mapped onto our fields as a run reads
        them (one authentication and one request to the network): check a source before its first run."""
        source = self.get_object(request, object_id)
        if not self.has_view_permission(request, source):
            raise PermissionDenied
        preview = source_preview(source=source)
        fields = list(CANONICAL_FIELDS)
        records = [
            {
                "cells": [record["ours"].get(name, "") for name in fields],
                "unread": ", ".join(f"{key}={value}" for key, value in record["unread"].items()),
                "errors": "; ".join(f"{name}: {message}" for name, message in record["errors"].items()),
            }
            for record in preview["records"]
        ]
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "original": source,
            "title": f"Preview: {source}",
            "preview": preview,
            "fields": fields,
            "records": records,
            "zone": source.report_zone_name,
        }
        return TemplateResponse(request, "admin/reconciliation/reportsource/preview.html", context)

    def run_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """Start a run of this source: its days, and the CSV for a CSV source."""
        source = self.get_object(request, object_id)
        if not self.has_change_permission(request, source):
            raise PermissionDenied
        today = source.partner.local_now().date()
        initial = {"date_from": today - datetime.timedelta(days=DEFAULT_RUN_DAYS - 1), "date_to": today}
        form = RunStartForm(request.POST or None, request.FILES or None, source=source, initial=initial)
        if request.method == "POST" and form.is_valid():
            upload = form.cleaned_data.get("report")
            try:
                run = run_queue(
                    source=source,
                    date_from=form.cleaned_data["date_from"],
                    date_to=form.cleaned_data["date_to"],
                    requested_by=request.user.get_username(),
                    upload=upload,
                    upload_name=upload.name if upload else "",
                )
            except PartnerDatabaseUnavailable as exc:
                self.message_user(request, f"The partner's database is unavailable: {exc.reason}", messages.ERROR)
            else:
                self.message_user(
                    request,
                    f"Run #{run.pk} is queued: the background worker performs it; this page shows its progress.",
                    messages.SUCCESS,
                )
                self.log_change(request, source, f"Reconciliation run #{run.pk} queued.")
                return HttpResponseRedirect(_run_url(source.partner, run.pk))
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "original": source,
            "title": f"Reconcile: {source}",
            "form": form,
        }
        return TemplateResponse(request, "admin/reconciliation/reportsource/run.html", context)


@admin.register(ReconciliationRun)
class ReconciliationRunAdmin(PartnerDatabaseAdmin):
    list_display = (
        "id",
        "source_name",
        "date_from",
        "date_to",
        "state",
        "trigger",
        "summary",
        "report_rows",
        "recorded",
        "applied",
        "started_at",
    )
    list_filter = (PartnerChooser, choice_filter("state", ReconciliationRun.STATES))
    show_facets = admin.ShowFacets.NEVER
    actions = ("record_missing", "apply_report")
    fields = (
        "source_name",
        "date_from",
        "date_to",
        "state",
        "error",
        "counts_table",
        "report_rows",
        "recorded",
        "applied",
        "started_at",
        "finished_at",
        "download_link",
    )
    readonly_fields = fields

    def get_object(self, request: HttpRequest, object_id: str, from_field=None):
        # Unknown, or in a partner database the user may not see: 404 (history included), not a redirect.
        found = super().get_object(request, object_id, from_field)
        if found is None:
            raise Http404(f"There is no {self.opts.verbose_name} {str(object_id)[:20]!r} for this partner.")
        return found

    def delete_view(self, request: HttpRequest, object_id: str, extra_context=None):
        # Nothing here is deleted in the admin. (Django's view would open its transaction on
        # the router's database, which cannot know the partner.) Another partner's: 404 first.
        self.partner_for(request)
        raise PermissionDenied

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # runs are started from their report source

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        # Nothing on a run is edited; "change" is the right to recover from it.
        return request.user.has_perm("reconciliation.change_reportsource")

    def has_view_permission(self, request: HttpRequest, obj=None) -> bool:
        return request.user.has_perm("reconciliation.view_reportsource") or self.has_change_permission(request, obj)

    @admin.display(description="discrepancies")
    def summary(self, run: ReconciliationRun) -> str:
        if run.state == ReconciliationRun.QUEUED:
            return "waiting for the background worker"
        if run.state == ReconciliationRun.RUNNING:
            pages = f"{run.pages_read} page(s), " if run.pages_read else ""
            return f"in progress: {pages}{run.rows_read} row(s) compared"
        return run.error[:80] if run.error else _counts_text(run.counts)

    @admin.display(description="rows")
    def counts_table(self, run: ReconciliationRun) -> str:
        if not run.counts:
            return "-"
        partner = Partner.objects.filter(pk=run.partner_id).first()
        if partner is None:
            return _counts_text(run.counts)
        rows = format_html_join(
            "",
            '<tr><td><a href="{}">{}</a></td><td>{}</td></tr>',
            ((_rows_url(partner, run.pk, kind), label, run.counts.get(kind, 0)) for kind, label in ROW_KINDS),
        )
        return format_html(
            '<table id="run-counts"><tbody>{}</tbody></table><p><a href="{}">All rows, discrepancies first</a></p>',
            rows,
            _rows_url(partner, run.pk),
        )

    @admin.display(description="download")
    def download_link(self, run: ReconciliationRun) -> str:
        partner = Partner.objects.filter(pk=run.partner_id).first()
        if partner is None or run.state != ReconciliationRun.DONE:
            return "-"
        url = reverse("admin:reconciliation_reconciliationrun_csv", args=[run.pk])
        return format_html('<a href="{}?{}={}">rows as CSV</a>', url, PARTNER_PARAM, partner.partner_code)

    def get_urls(self):
        csv_url = path(
            "<int:run_id>/csv/", self.admin_site.admin_view(self.csv_view), name="reconciliation_reconciliationrun_csv"
        )
        recover_url = path(
            "<int:run_id>/recover/",
            self.admin_site.admin_view(self.recover_view),
            name="reconciliation_reconciliationrun_recover",
        )
        return [csv_url, recover_url, *super().get_urls()]

    def change_view(self, request: HttpRequest, object_id: str, form_url: str = "", extra_context=None):
        """The run's page: read-only, its progress while it is queued or running (the page
        reloads itself), its rows by kind explained, and the recovery buttons once done."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        partner = self.partner_for(request)
        run = None
        if partner is not None and str(object_id).isdigit():
            try:
                run = self.get_queryset(request).filter(pk=int(object_id)).first()
            except (DatabaseError, PartnerDatabaseUnavailable) as exc:
                return self._unreadable(request, exc)
        if run is None:
            raise Http404(f"There is no run #{str(object_id)[:20]} for this partner.")
        source = ReportSource.objects.filter(pk=run.source_id).first() if run.source_id else None
        in_progress = run.state in (ReconciliationRun.QUEUED, ReconciliationRun.RUNNING)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": f"Reconciliation run #{run.pk}",
            "run": run,
            "partner": partner,
            "source": source,
            "in_progress": in_progress,
            "refresh_seconds": RUN_PAGE_REFRESH_SECONDS if in_progress else None,
            "kinds": [
                (kind, label, ROW_KIND_EXPLAINED[kind], run.counts.get(kind, 0), _rows_url(partner, run.pk, kind))
                for kind, label in ROW_KINDS
            ],
            "rows_url": _rows_url(partner, run.pk),
            "csv_url": f"{reverse('admin:reconciliation_reconciliationrun_csv', args=[run.pk])}"
            f"?{PARTNER_PARAM}={partner.partner_code}",
            "recover_url": f"{reverse('admin:reconciliation_reconciliationrun_recover', args=[run.pk])}"
            f"?{PARTNER_PARAM}={partner.partner_code}",
            "can_recover": run.state == ReconciliationRun.DONE and self.has_change_permission(request),
            "actions_explained": ACTIONS_EXPLAINED,
            "source_url": reverse("admin:reconciliation_reportsource_change", args=[source.pk]) if source else "",
            "reconcile_url": reverse("admin:reconciliation_reportsource_run", args=[source.pk]) if source else "",
        }
        return TemplateResponse(request, "admin/reconciliation/reconciliationrun/run.html", context)

    def recover_view(self, request: HttpRequest, run_id: int) -> HttpResponse:
        """The run page's buttons: record the missing ones, or apply the report (POST)."""
        if request.method != "POST":
            return HttpResponseRedirect(reverse("admin:reconciliation_reconciliationrun_changelist"))
        if not self.has_change_permission(request):
            raise PermissionDenied
        partner = self.partner_for(request)
        what = request.POST.get("recover")
        if what not in RECOVERIES:
            raise BadRequest("recover: say 'missing' or 'apply'")
        if partner is None:
            raise Http404(f"There is no run #{run_id} for this partner.")
        runs = self.get_queryset(request).filter(pk=run_id)
        recover, verb = RECOVERIES[what]
        self._recover(request, runs, recover, verb)
        return HttpResponseRedirect(_run_url(partner, run_id))

    def csv_view(self, request: HttpRequest, run_id: int) -> HttpResponse:
        """The run's rows as CSV, discrepancies first, streamed."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        partner = self.partner_for(request)
        try:
            run = self.get_queryset(request).filter(pk=run_id).first() if partner is not None else None
        except (DatabaseError, PartnerDatabaseUnavailable) as exc:
            return self._unreadable(request, exc)
        if run is None:
            raise Http404(f"There is no run #{run_id} for this partner.")
        rows = run_rows_export(alias=partner.database_alias, run_id=run.pk)
        response = StreamingHttpResponse(csv_lines(RUN_EXPORT_COLUMNS, rows), content_type="text/csv; charset=utf-8")
        filename = f"{partner.partner_code}-reconciliation-{run.pk}.csv"
        response["Content-Disposition"] = f'attachment; filename="{filename}"'
        return response

    def _unreadable(self, request: HttpRequest, exc: Exception) -> HttpResponse:
        reason = _reason(exc)
        self.message_user(request, f"This partner's database cannot be read: {reason}", messages.ERROR)
        return HttpResponseRedirect(reverse("admin:partners_partner_changelist"))

    def _recover(self, request: HttpRequest, queryset: QuerySet, recover, verb: str) -> None:
        partner = self.partner_for(request)
        try:
            runs = list(queryset)
        except (DatabaseError, PartnerDatabaseUnavailable) as exc:
            self.message_user(
                request, f"Stopped: the partner's database is unavailable: {_reason(exc)}", messages.ERROR
            )
            return
        for run in runs:
            try:
                outcomes = recover(partner=partner, run=run)
            except RecoveryRefused as exc:
                self.message_user(request, str(exc), messages.WARNING)
                continue
            except PartnerDatabaseUnavailable as exc:
                self.message_user(
                    request, f"Stopped: the partner's database is unavailable: {exc.reason}", messages.ERROR
                )
                return
            summary = ", ".join(f"{word}: {n}" for word, n in sorted(outcomes.items())) or "nothing left to do"
            text = f"Run #{run.pk}, {verb}: {summary}."
            if outcomes:
                self.log_change(request, partner, text)  # on the partner: a run's log link could not name its database
            self.message_user(request, text, messages.SUCCESS)

    @admin.action(
        description="Record the missing ones (conversions in the report, never received)", permissions=["change"]
    )
    def record_missing(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._recover(request, queryset, run_missing_record, "missing ones recorded")

    @admin.action(description="Apply the report's statuses and amounts", permissions=["change"])
    def apply_report(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._recover(request, queryset, run_report_apply, "report applied")


RECOVERIES = {
    "missing": (run_missing_record, "missing ones recorded"),
    "apply": (run_report_apply, "report applied"),
}


class RunFilter(TextInputFilter):
    title = "run"
    parameter_name = "run"

    def queryset(self, request, queryset):
        value = self.value()
        if not value:
            return queryset
        if not value.isdigit():
            raise IncorrectLookupParameters(f"run: {value[:20]!r} is not a run number")
        return queryset.filter(run_id=int(value))


@admin.register(ReconciliationRow)
class ReconciliationRowAdmin(PartnerDatabaseAdmin):
    list_display = (
        "conversion_id",
        "kind",
        "differences_text",
        "conversion_datetime",
        "status",
        "usd_sale_amount",
        "usd_earning",
        "currency",
        "action",
        "run_id",
    )
    list_filter = (PartnerChooser, RunFilter, choice_filter("kind", ROW_KINDS))
    search_fields = ("=conversion_id",)
    ordering = ("rank", "id")  # discrepancies first
    sortable_by = ()
    show_facets = admin.ShowFacets.NEVER
    show_full_result_count = False
    list_per_page = 100
    fields = (
        "run_id",
        "conversion_id",
        "kind",
        "differences_text",
        "conversion_datetime",
        "status",
        "usd_sale_amount",
        "usd_earning",
        "currency",
        "conversion_pk",
        "report_line",
        "report_data",
        "action",
        "action_at",
    )
    readonly_fields = fields

    def get_object(self, request: HttpRequest, object_id: str, from_field=None):
        # Unknown, or in a partner database the user may not see: 404 (history included), not a redirect.
        found = super().get_object(request, object_id, from_field)
        if found is None:
            raise Http404(f"There is no {self.opts.verbose_name} {str(object_id)[:20]!r} for this partner.")
        return found

    def delete_view(self, request: HttpRequest, object_id: str, extra_context=None):
        # Nothing here is deleted in the admin. (Django's view would open its transaction on
        # the router's database, which cannot know the partner.) Another partner's: 404 first.
        self.partner_for(request)
        raise PermissionDenied

    @admin.display(description="differences (ours -> the report's)")
    def differences_text(self, row: ReconciliationRow) -> str:
        return "; ".join(f"{name}: {ours} -> {theirs}" for name, (ours, theirs) in row.differences.items()) or "-"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_view_permission(self, request: HttpRequest, obj=None) -> bool:
        return request.user.has_perm("reconciliation.view_reportsource") or request.user.has_perm(
            "reconciliation.change_reportsource"
        )
