"""What the conversions app adds to the partner admin (partners/admin.py's extension points):
today's count and the links in the list, refused postbacks on a partner's page, the
dashboards and the test postback, and how many conversions a deletion keeps.

Today's count of a whole list page is read at once (conversions.cross_partner: one
statement per shared database) before the rows are drawn, not one query per row."""

import datetime

from django.contrib import admin
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest
from django.urls import URLPattern, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

from conversions.admin.dashboards import PartnerDashboards, conversions_url
from conversions.admin.dry_run import DryRunPage
from conversions.admin.search import ConversionSearchPage, may_search
from conversions.cross_partner import partners_conversion_counts
from conversions.ingest.refusals import refusal_counts
from conversions.selectors import conversion_count
from infra.databases import PartnerDatabaseUnavailable, partner_database
from partners.admin import Link, PartnerAdminExtension, partner_admin_extend
from partners.models import Partner

# Where the list's page keeps each partner's count of today (set by _list_page).
TODAY_COUNT = "_postbacks_today"


def partner_conversions_since(partner: Partner, since: datetime.datetime | None = None) -> int | None:
    """Rows the partner's database received (since `since`), or None when it cannot be read."""
    try:
        with partner_database(partner):
            return conversion_count(partner=partner, since=since)
    except (PartnerDatabaseUnavailable, ImproperlyConfigured):  # unreachable, or a URL this build cannot use
        return None


def _midnight() -> datetime.datetime:
    return timezone.make_aware(datetime.datetime.combine(timezone.localdate(), datetime.time.min))


def _list_page(request: HttpRequest, partners: list[Partner]) -> None:
    counts = partners_conversion_counts(partners=partners, since=_midnight())
    for partner in partners:
        setattr(partner, TODAY_COUNT, counts[partner.pk])


@admin.display(description="postbacks today")
def postbacks_today(partner: Partner) -> str:
    if hasattr(partner, TODAY_COUNT):
        count = getattr(partner, TODAY_COUNT)
    else:  # a partner drawn outside the list's page
        count = partner_conversions_since(partner, _midnight())
    return "unavailable" if count is None else f"{count:,}"


@admin.display(description="see")
def conversions_link(partner: Partner) -> str:
    dashboard = reverse("admin:partners_partner_dashboard", args=[partner.pk])
    return format_html(
        '<a href="{}">conversions</a> · <a href="{}">dashboard</a>', conversions_url(partner.partner_code), dashboard
    )


@admin.display(description="refused postbacks (7 days)")
def refusals_recent(partner: Partner) -> str:
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


def _urls(model_admin: admin.ModelAdmin) -> list[URLPattern]:
    return [
        *PartnerDashboards(model_admin).urls(),
        *DryRunPage(model_admin).urls(),
        *ConversionSearchPage(model_admin).urls(),
    ]


def _list_links(request: HttpRequest) -> list[Link]:
    links = [("Dashboard of all partners", reverse("admin:partners_partner_overview"))]
    if may_search(request):
        links.append(("Find a conversion in every partner", reverse(ConversionSearchPage.URL_NAME)))
    return links


def _partner_links(request: HttpRequest, partner: Partner) -> list[Link]:
    return [
        ("Test postback", reverse("admin:partners_partner_test_postback", args=[partner.pk])),
        ("Conversions", conversions_url(partner.partner_code)),
        ("Dashboard", reverse("admin:partners_partner_dashboard", args=[partner.pk])),
    ]


def _delete_context(request: HttpRequest, partner: Partner) -> dict[str, int | None]:
    return {"kept_conversions": partner_conversions_since(partner)}


partner_admin_extend(
    app_label="conversions",
    extension=PartnerAdminExtension(
        columns=(postbacks_today, conversions_link),
        list_page=_list_page,
        security_fields=(refusals_recent,),
        urls=_urls,
        list_links=_list_links,
        partner_links=_partner_links,
        delete_context=_delete_context,
    ),
)
