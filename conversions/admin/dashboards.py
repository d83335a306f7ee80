"""The dashboards, pages of the partner admin: one partner's, and every partner's side by side.

Their numbers are the /stats API's selectors under the definitions of docs/numbers.md;
conversions/dashboard.py shapes them as charts and tables. Each table downloads as CSV
(`?export=<table id>` on the same URL).
"""

import logging
from decimal import Decimal

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse

from conversions.cross_partner import partners_stats
from conversions.dashboard import (
    CURRENCY,
    ConversionsLink,
    Table,
    dashboard_headlines,
    dashboard_overview_charts,
    dashboard_overview_tables,
    dashboard_partner_charts,
    dashboard_partner_tables,
    dashboard_publishers,
    dashboard_publishers_table,
    overview_totals,
)
from conversions.forms import DashboardForm, OverviewForm, RangeForm
from conversions.selectors import conversion_stats, conversion_sub_id_prefixes, conversion_totals
from infra.databases import PartnerDatabaseUnavailable, partner_database
from partners.selectors import partners_visible_to

logger = logging.getLogger("conversions.admin")

VIEW_CONVERSIONS = "conversions.view_partnerconversion"


def conversions_url(partner_code: str) -> str:
    return reverse("admin:conversions_partnerconversion_changelist") + f"?partner={partner_code}"


def table_csv_response(table: Table, name: str) -> HttpResponse:
    response = HttpResponse(table.csv(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{name}-{table.id.removeprefix("table-")}.csv"'
    return response


def by_name(tables: dict[str, Table]) -> dict[str, Table]:
    """Tables by a name templates can look up (`table-days` -> `table_days`)."""
    return {table_id.replace("-", "_"): table for table_id, table in tables.items()}


class PartnerDashboards:
    """The dashboard views, served by the partner admin (`model_admin`) under its URLs."""

    def __init__(self, model_admin: admin.ModelAdmin) -> None:
        self.model_admin = model_admin

    def urls(self) -> list[URLPattern]:
        view = self.model_admin.admin_site.admin_view
        return [
            path("dashboard/", view(self.overview_view), name="partners_partner_overview"),
            path("<path:object_id>/dashboard/", view(self.partner_view), name="partners_partner_dashboard"),
        ]

    def _context(self, request: HttpRequest, title: str, form: RangeForm) -> dict:
        if not request.user.has_perm(VIEW_CONVERSIONS):
            raise PermissionDenied
        query = request.GET.copy()
        query.pop("export", None)
        return {
            **self.model_admin.admin_site.each_context(request),
            # Charts and tables need the whole width: no app sidebar on the dashboards.
            "is_nav_sidebar_enabled": False,
            "opts": self.model_admin.opts,
            "title": title,
            "form": form,
            "currency": CURRENCY,
            "overview_url": reverse("admin:partners_partner_overview"),
            "export_prefix": f"?{query.urlencode()}&export=" if query else "?export=",
        }

    @staticmethod
    def _export(request: HttpRequest, tables: dict[str, Table], name: str) -> HttpResponse | None:
        """The CSV of the table `?export=` names; 400 for a name that is no table here."""
        wanted = request.GET.get("export")
        if wanted is None:
            return None
        if wanted not in tables:
            return HttpResponse(
                f"export: no table {wanted[:60]!r} here; one of {', '.join(tables)}.\n",
                status=400,
                content_type="text/plain; charset=utf-8",
            )
        return table_csv_response(tables[wanted], name)

    def partner_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """One partner's headline figures against the previous period; originals, duplicates,
        invalid postbacks and amounts per day, by status; its top offers, sub_id prefixes and
        publishers: charts with their numbers beside them."""
        partner = self.model_admin.get_object(request, object_id)  # 404 for a partner the user may not see
        form = DashboardForm(request.GET)
        context = self._context(request, f"Dashboard: {partner.partner_name}", form)
        context.update(original=partner, partner=partner, conversions_url=conversions_url(partner.partner_code))
        if not form.is_valid():
            return TemplateResponse(request, "admin/partners/partner/dashboard.html", context)
        time_range = form.time_range()
        previous_range = time_range.previous()
        try:
            with partner_database(partner):
                stats = conversion_stats(partner=partner, time_range=time_range, top=10)
                previous = conversion_totals(partner=partner, time_range=previous_range)
                prefixes = conversion_sub_id_prefixes(
                    partner=partner, time_range=time_range, length=form.cleaned_data["prefix_length"], top=10
                )
                publishers = previous_publishers = None
                if form.cleaned_data["publishers"] or request.GET.get("export") == "table-publishers":
                    try:
                        publishers = dashboard_publishers(partner=partner, time_range=time_range)
                        previous_publishers = dashboard_publishers(partner=partner, time_range=previous_range)
                    except DatabaseError as exc:
                        # A publisher's regular expression PostgreSQL does not read as Python does.
                        logger.warning("dashboard by publisher partner=%s: %s", partner.partner_code, exc)
                        publishers = previous_publishers = None
                        context["publishers_error"] = (
                            "By publisher cannot be shown: a publisher's match rule is not understood by the "
                            f"database ({str(exc).splitlines()[0][:200]}). Simplify its regular expression."
                        )
        except PartnerDatabaseUnavailable as exc:
            context["unavailable"] = exc.reason
            return TemplateResponse(request, "admin/partners/partner/dashboard.html", context)
        link = ConversionsLink(
            base=reverse("admin:conversions_partnerconversion_changelist"),
            partner_code=partner.partner_code,
            time_range=time_range,
        )
        tables = dashboard_partner_tables(stats=stats, prefixes=prefixes, link=link)
        if publishers is not None:
            tables["table-publishers"] = dashboard_publishers_table(publishers, link)
        exported = self._export(request, tables, f"{partner.partner_code}-{form.cleaned_data['start']}")
        if exported is not None:
            return exported
        payouts = previous_payouts = None
        if publishers is not None:
            payouts = sum((publisher.payout for publisher in publishers), Decimal("0.00"))
            previous_payouts = sum((publisher.payout for publisher in previous_publishers or []), Decimal("0.00"))
        context.update(
            stats=stats,
            previous_range=previous_range,
            headlines=dashboard_headlines(
                totals=stats.totals,
                previous=previous,
                payouts=payouts,
                previous_payouts=previous_payouts,
            ),
            tables=by_name(tables),
            charts=dashboard_partner_charts(stats=stats, prefixes=prefixes, link=link),
        )
        return TemplateResponse(request, "admin/partners/partner/dashboard.html", context)

    def overview_view(self, request: HttpRequest) -> HttpResponse:
        """Every partner the user may see, for one range: the first `top` of them (in the
        chosen order) in the charts and the others as one series; every one in the table."""
        form = OverviewForm(request.GET)
        context = self._context(request, "Dashboard: all partners", form)
        if not form.is_valid():
            return TemplateResponse(request, "admin/partners/partner/overview.html", context)
        top, sort = form.cleaned_data["top"], form.cleaned_data["sort"]
        partners = list(partners_visible_to(request.user).order_by("partner_code"))
        results = partners_stats(partners=partners, time_range=form.time_range(), top=0)
        query = request.GET.copy()
        query.pop("export", None)
        suffix = f"?{query.urlencode()}" if query else ""
        tables = dashboard_overview_tables(
            results=results,
            sort=sort,
            dashboard_url=lambda partner: reverse("admin:partners_partner_dashboard", args=[partner.pk]) + suffix,
        )
        exported = self._export(request, tables, f"all-partners-{form.cleaned_data['start']}")
        if exported is not None:
            return exported
        totals = overview_totals(results)
        context.update(
            results=results,
            tables=by_name(tables),
            sort_label=dict(form.fields["sort"].choices)[sort],
            headlines=dashboard_headlines(totals=totals, previous=None),
            partner_count=len(results),
            unavailable_count=sum(result.stats is None for result in results),
            charts=dashboard_overview_charts(results=results, top=top, sort=sort),
        )
        return TemplateResponse(request, "admin/partners/partner/overview.html", context)
