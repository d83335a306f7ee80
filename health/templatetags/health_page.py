"""The health page is the admin's index of the health app (`/admin/health/`), which Django
renders itself (AdminSite.app_index, customised only by its template): this tag hands that
template its rows."""

from django import template

from health.overview import HealthOverview, health_overview

register = template.Library()


@register.simple_tag(takes_context=True)
def health_overview_of_user(context) -> HealthOverview:
    """The health page of the user making the request (their partners only)."""
    return health_overview(user=context["request"].user)
