"""Find a conversion in every partner: a page of the partner admin, beside the dashboard of
all partners. It lists the rows whose conversion_id or click_id is exactly the term, in
every partner the user may see (partner scopes), each linked to its page in that
partner's conversions; the rows come from conversions.cross_partner (one statement per
shared database)."""

from typing import Any
from urllib.parse import urlencode

from django import forms
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse

from conversions.admin.base import PARTNER_PARAM
from conversions.admin.conversions import outcome_badge, status_badge
from conversions.admin.dashboards import VIEW_CONVERSIONS
from conversions.admin.filters import RowsFilter
from conversions.cross_partner import SEARCH_LIMIT, ConversionFound, partners_conversions_find
from partners.mapping import CANONICAL_FIELDS
from partners.selectors import partners_visible_to

# No stored conversion_id or click_id is longer: a longer term cannot match.
TERM_MAX_LENGTH = max(CANONICAL_FIELDS["conversion_id"].max_length, CANONICAL_FIELDS["click_id"].max_length)


def may_search(request: HttpRequest) -> bool:
    """Whether the user may search conversions (the permission the conversions lists need)."""
    return request.user.has_perm(VIEW_CONVERSIONS)


class ConversionSearchForm(forms.Form):
    # CharField refuses NUL characters, which PostgreSQL cannot compare.
    q = forms.CharField(
        label="conversion_id or click_id",
        max_length=TERM_MAX_LENGTH,
        strip=True,
        widget=forms.TextInput(attrs={"size": 50, "autofocus": True}),
    )


class ConversionSearchPage:
    """The search, served by the partner admin (`model_admin`) under its URLs."""

    URL_NAME = "admin:partners_partner_search"

    def __init__(self, model_admin: admin.ModelAdmin) -> None:
        self.model_admin = model_admin

    def urls(self) -> list[URLPattern]:
        view = self.model_admin.admin_site.admin_view(self.search_view)
        return [path("search/", view, name="partners_partner_search")]

    def search_view(self, request: HttpRequest) -> HttpResponse:
        """The rows of every visible partner whose conversion_id or click_id is the term, newest first."""
        if not may_search(request):
            raise PermissionDenied
        form = ConversionSearchForm(request.GET if "q" in request.GET else None)
        context = {
            **self.model_admin.admin_site.each_context(request),
            "opts": self.model_admin.opts,
            "title": "Find a conversion in every partner",
            "form": form,
            "limit": SEARCH_LIMIT,
        }
        if form.is_valid():
            term = form.cleaned_data["q"]
            partners = list(partners_visible_to(request.user).order_by("partner_code"))
            search = partners_conversions_find(partners=partners, term=term)
            context.update(search=search, rows=[_row(found, term) for found in search.found])
        return TemplateResponse(request, "admin/partners/partner/conversion_search.html", context)


def _row(found: ConversionFound, term: str) -> dict[str, Any]:
    code = found.partner.partner_code
    change = reverse("admin:conversions_partnerconversion_change", args=[found.id])
    listed = reverse("admin:conversions_partnerconversion_changelist")
    return {
        "partner": found.partner,
        "conversion_id": found.conversion_id,
        "click_id": found.click_id,
        "outcome": outcome_badge(found.outcome),
        "status": status_badge(found.status),
        "received_at": found.received_at,
        "change_url": f"{change}?{urlencode({PARTNER_PARAM: code})}",
        # The partner's own list, searched for the same term (its search covers both columns),
        # every kind of row, as here.
        "list_url": f"{listed}?{urlencode({PARTNER_PARAM: code, 'q': term, 'rows': RowsFilter.ALL})}",
    }
