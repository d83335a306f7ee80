"""The dashboards, pages of the partner admin: one partner's, and every partner's side by side.

Their numbers are the /stats API's selectors; conversions/dashboard.py shapes them as charts.
"""

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse

from conversions.cross_partner import partners_stats
from conversions.dashboard import (
    dashboard_overview_charts,
    dashboard_partner_charts,
    dashboard_status_names,
    dashboard_status_rows,
)
from conversions.forms import DashboardForm
from conversions.selectors import conversion_stats, conversion_sub_id_prefixes
from infra.databases import PartnerDatabaseUnavailable, partner_database
from partners.selectors import partners_visible_to

VIEW_CONVERSIONS = "conversions.view_partnerconversion"


# The per-day table has a column per partner: past this many it is a page of numbers nobody
# reads (and, with 1,000 partners, 30,000 cells that took most of the page's 4 s to draw);
# the charts and each partner's own dashboard carry the same days.
OVERVIEW_DAYS_PARTNERS = 50


def conversions_url(partner_code: str) -> str:
    return reverse("admin:conversions_partnerconversion_changelist") + f"?partner={partner_code}"


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

    def _context(self, request: HttpRequest, title: str, form: DashboardForm) -> dict:
        if not request.user.has_perm(VIEW_CONVERSIONS):
            raise PermissionDenied
        return {
            **self.model_admin.admin_site.each_context(request),
            "opts": self.model_admin.opts,
            "title": title,
            "form": form,
            "overview_url": reverse("admin:partners_partner_overview"),
        }

    def partner_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """One partner's originals, duplicates, invalid postbacks and amounts per day, by status;
        its top offers and sub_id prefixes: charts with their numbers beside them."""
        partner = self.model_admin.get_object(request, object_id)  # 404 for a partner the user may not see
        form = DashboardForm(request.GET)
        context = self._context(request, f"Dashboard: {partner.partner_name}", form)
        context.update(original=partner, partner=partner, conversions_url=conversions_url(partner.partner_code))
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
        context = self._context(request, "Dashboard: all partners", form)
        if form.is_valid():
            partners = list(partners_visible_to(request.user).order_by("partner_code"))
            results = partners_stats(partners=partners, time_range=form.time_range(), top=0)
            context.update(results=results, charts=dashboard_overview_charts(results=results))
            if len(results) > OVERVIEW_DAYS_PARTNERS:
                context["days_omitted"] = OVERVIEW_DAYS_PARTNERS
            elif results and all(result.stats is not None for result in results):
                context["days"] = [
                    {"day": days[0].day, "partners": days}
                    for days in zip(*(result.stats.days for result in results), strict=True)
                ]
        return TemplateResponse(request, "admin/partners/partner/overview.html", context)
