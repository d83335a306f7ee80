"""The admin site: named for what it is, its home page leading with the daily work.

Installed as Django's default site (PostbackAdminConfig, below), so every
`admin.site.register` / `@admin.register` of the apps lands here unchanged.
"""

from django.contrib import admin
from django.contrib.admin.apps import AdminConfig
from django.http import HttpRequest

# The apps' order on the home page: the daily work first, the user accounts and API tokens last.
APP_ORDER = ("partners", "conversions", "publishers", "reconciliation", "health", "auth", "authtoken")


class PostbackAdminSite(admin.AdminSite):
    site_header = "Postback platform"
    site_title = "Postback platform"
    index_title = "Partners, conversions and publishers"
    # There is no public site to view: the service's other addresses are machine endpoints.
    site_url = None

    def get_app_list(self, request: HttpRequest, app_label: str | None = None) -> list[dict]:
        apps = super().get_app_list(request, app_label)
        rank = {label: index for index, label in enumerate(APP_ORDER)}
        return sorted(apps, key=lambda app: (rank.get(app["app_label"], len(APP_ORDER)), app["name"]))


class PostbackAdminConfig(AdminConfig):
    """django.contrib.admin with the platform's own site, installed in its place (settings)."""

    default_site = "postback_site.admin_site.PostbackAdminSite"
