"""The partner admin: what account managers use to add and configure partners.

Registered once, here. What needs a partner's conversions (today's count, refused
postbacks, the dashboards, the test postback, the count a deletion keeps) is added by
the conversions app through `partner_admin_extend()`: partners never import conversions.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html

from infra.databases import PartnerDatabaseUnavailable
from partners.forms import PartnerAdminForm
from partners.mapping import postback_url_template
from partners.models import Partner, PartnerScope
from partners.selectors import partner_directory, partners_visible_to
from partners.services import (
    partner_provision,
    partner_scope_grant_creator,
    partner_secret_clear,
    partner_secret_rotate,
)


def partner_postback_url(partner: Partner, request: HttpRequest) -> str:
    base_url = settings.PUBLIC_BASE_URL or request.build_absolute_uri("/")
    return postback_url_template(
        base_url=base_url, endpoint_path=partner.endpoint_path, mapping=partner.parameter_mapping or {}
    )


def partner_extra_urls(partner: Partner, request: HttpRequest) -> list[str]:
    """The partner's extra paths as absolute URLs: also accepted, served like its endpoint."""
    base_url = (settings.PUBLIC_BASE_URL or request.build_absolute_uri("/")).rstrip("/")
    return [f"{base_url}/{path.strip('/')}" for path in partner.extra_paths or []]


Link = tuple[str, str]  # (label, url)


@dataclass(frozen=True)
class PartnerAdminExtension:
    """What an app built on partners adds to the one partner admin; every part is optional.

    Columns and fields are `admin.display` functions of a partner; the other parts are
    called with the request, like ModelAdmin's own get_* hooks.
    """

    columns: tuple[Callable[[Partner], str], ...] = ()  # appended to the list's columns
    # Called with the list's page of partners before its columns are drawn, so a column
    # can show what one query found for the whole page instead of querying per row.
    list_page: Callable[[HttpRequest, list[Partner]], None] | None = None
    security_fields: tuple[Callable[[Partner], str], ...] = ()  # read-only, in the "Security" section
    urls: Callable[["PartnerAdmin"], list[URLPattern]] | None = None  # mounted before the admin's own
    list_links: Callable[[HttpRequest], list[Link]] | None = None  # the list's object tools
    partner_links: Callable[[HttpRequest, Partner], list[Link]] | None = None  # a partner page's object tools
    delete_context: Callable[[HttpRequest, Partner], dict[str, Any]] | None = None  # for delete_confirmation.html


partner_admin_extensions: dict[str, PartnerAdminExtension] = {}


def partner_admin_extend(*, app_label: str, extension: PartnerAdminExtension) -> None:
    """Add an app's part of the partner admin (one per app: a second call replaces the first)."""
    partner_admin_extensions[app_label] = extension


def _links(hooks: list, *args: Any) -> list[Link]:
    return [link for hook in hooks if hook is not None for link in hook(*args)]


@admin.register(Partner)
class PartnerAdmin(admin.ModelAdmin):
    form = PartnerAdminForm
    list_display = (
        "partner_code",
        "partner_name",
        "endpoint_path",
        "database_name",
        "is_active",
    )
    list_display_links = ("partner_code", "partner_name")
    list_filter = ("is_active", "enable_logging", "cloud_run_region")
    search_fields = ("partner_code", "partner_name", "endpoint_path", "database_name")
    readonly_fields = ("created_at", "updated_at", "secret_state")
    fieldsets = (
        ("Identity", {"fields": ("partner_code", "partner_name", "is_active")}),
        ("Endpoint", {"fields": ("endpoint_path", "extra_paths", "timezone", "enable_logging")}),
        ("Database", {"fields": ("database_name", "database_url")}),
        ("Parameter mapping", {"fields": ("parameter_mapping",)}),
        (
            "Statuses",
            {
                "fields": ("status_mapping", "status_transitions"),
                "description": "Our statuses: pending, approved, rejected, paid. Map each value the partner sends "
                "onto one of them (e.g. 1 → approved, cancelled → rejected), and add any change of status the "
                "partner may make besides the default ones (e.g. rejected → approved).",
            },
        ),
        ("Security", {"fields": ("secret_state", "token_param", "allowed_ips")}),
        ("Limits", {"fields": ("max_daily_requests", "data_retention_days")}),
        (
            "Cloud Run",
            {
                "classes": ("collapse",),
                "fields": ("cloud_run_service_name", "cloud_run_region", "cloud_run_project_id", "endpoint_url"),
            },
        ),
        ("History", {"classes": ("collapse",), "fields": ("created_at", "updated_at")}),
    )

    @admin.display(description="postback secret")
    def secret_state(self, partner: Partner) -> str:
        if not partner.pk:
            return "Save the partner first; then a secret can be generated."
        url = reverse("admin:partners_partner_secret", args=[partner.pk])
        if partner.has_postback_secret:
            state, action = "Set (never shown again)", "Rotate or remove…"
        else:
            state, action = "Not set: anyone with the URL can post", "Generate…"
        return format_html('{} &mdash; <a class="button" id="secret-action" href="{}">{}</a>', state, url, action)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Partner]:
        # A user limited to some partners (PartnerScope) lists and opens only those.
        visible = partners_visible_to(request.user).values("pk")
        return super().get_queryset(request).filter(pk__in=visible)

    def get_object(self, request: HttpRequest, object_id: str, from_field=None) -> Partner:
        """The partner, or a 404 when there is none the user may see (a hidden one included)."""
        partner = super().get_object(request, object_id, from_field)
        if partner is None:
            raise Http404("There is no such partner, or it is not one of yours.")
        return partner

    # --- what other apps add (partner_admin_extend) --------------------------------

    def get_list_display(self, request: HttpRequest):
        columns = (column for extension in partner_admin_extensions.values() for column in extension.columns)
        return (*super().get_list_display(request), *columns)

    def get_readonly_fields(self, request: HttpRequest, obj: Partner | None = None):
        return (*super().get_readonly_fields(request, obj), *self._security_fields())

    def get_fieldsets(self, request: HttpRequest, obj: Partner | None = None):
        extra = self._security_fields()
        return tuple(
            (name, {**options, "fields": (*options["fields"], *extra)}) if name == "Security" else (name, options)
            for name, options in super().get_fieldsets(request, obj)
        )

    @staticmethod
    def _security_fields() -> tuple[Callable[[Partner], str], ...]:
        return tuple(field for extension in partner_admin_extensions.values() for field in extension.security_fields)

    # --- views ------------------------------------------------------------------------

    def get_changelist_instance(self, request: HttpRequest):
        changelist = super().get_changelist_instance(request)
        # The page's partners are read here, once: the list draws these very objects, so
        # what a list_page hook sets on them is there when their columns are drawn.
        page = list(changelist.result_list)
        for extension in partner_admin_extensions.values():
            if extension.list_page is not None:
                extension.list_page(request, page)
        return changelist

    def changelist_view(self, request: HttpRequest, extra_context=None):
        links = _links([extension.list_links for extension in partner_admin_extensions.values()], request)
        # The list and its filters fit 1400 px only without the app list beside them.
        context = {"is_nav_sidebar_enabled": False, "list_links": links, **(extra_context or {})}
        return super().changelist_view(request, context)

    def get_actions(self, request: HttpRequest):
        # Deleting goes through the single-partner page, which shows what the database keeps.
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)
        return actions

    def get_urls(self):
        secret = path(
            "<path:object_id>/secret/", self.admin_site.admin_view(self.secret_view), name="partners_partner_secret"
        )
        # Before the admin's own `<path:object_id>/` patterns, which would take e.g. "dashboard/".
        extended = [
            url for extension in partner_admin_extensions.values() if extension.urls for url in extension.urls(self)
        ]
        return [secret, *extended, *super().get_urls()]

    def change_view(self, request: HttpRequest, object_id: str, form_url: str = "", extra_context=None):
        partner = self.get_object(request, object_id)
        extra_context = dict(extra_context or {})
        if partner is not None:
            extra_context["postback_url"] = partner_postback_url(partner, request)
            extra_context["extra_urls"] = partner_extra_urls(partner, request)
            hooks = [extension.partner_links for extension in partner_admin_extensions.values()]
            extra_context["partner_links"] = _links(hooks, request, partner)
        return super().change_view(request, object_id, form_url, extra_context)

    def save_model(self, request: HttpRequest, obj: Partner, form: PartnerAdminForm, change: bool) -> None:
        super().save_model(request, obj, form, change)
        partner_directory.clear()
        if not change:
            # Else a scoped account manager's new partner would answer them 404 at once.
            partner_scope_grant_creator(user=request.user, partner=obj)
        if form.database_moved:
            # The form checked that it can be done; if it fails now anyway, the partner is
            # saved and its postbacks answer 503 (retried by the sender) until it is fixed.
            try:
                result = partner_provision(partner=obj)
            except PartnerDatabaseUnavailable as exc:
                self.message_user(
                    request,
                    f"Saved, but its database could not be prepared: {exc.reason}. Its postbacks are answered 503 "
                    "until it is; save the partner again to retry.",
                    messages.ERROR,
                )
            else:
                self.message_user(request, result.describe_plainly(), messages.SUCCESS)

    def delete_model(self, request: HttpRequest, obj: Partner) -> None:
        super().delete_model(request, obj)
        partner_directory.clear()

    def delete_view(self, request: HttpRequest, object_id: str, extra_context=None):
        partner = self.get_object(request, object_id)
        extra_context = dict(extra_context or {})
        if partner is not None:
            extra_context["kept_database"] = partner.database_name
            for extension in partner_admin_extensions.values():
                if extension.delete_context is not None:
                    extra_context.update(extension.delete_context(request, partner))
        return super().delete_view(request, object_id, extra_context)

    def secret_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """Generate or rotate (show the new secret once, never stored in a message) or remove the secret."""
        partner = self.get_object(request, object_id)
        if not self.has_change_permission(request, partner):
            raise PermissionDenied
        new_secret, rotated = None, False
        if request.method == "POST":
            action = request.POST.get("action")
            if action == "rotate":
                rotated = partner.has_postback_secret
                new_secret = partner_secret_rotate(partner=partner)
                verb = "Rotated" if rotated else "Generated"
                self.log_change(request, partner, f"{verb} the postback secret.")
            elif action == "remove":
                partner_secret_clear(partner=partner)
                self.log_change(request, partner, "Removed the postback secret.")
                self.message_user(request, "The postback secret is removed.", messages.WARNING)
                return HttpResponseRedirect(reverse("admin:partners_partner_change", args=[partner.pk]))
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "original": partner,
            "title": f"Postback secret: {partner.partner_name}",
            "new_secret": new_secret,
            "rotated": rotated,
            "change_url": reverse("admin:partners_partner_change", args=[partner.pk]),
            "postback_url": partner_postback_url(partner, request),
        }
        response = TemplateResponse(request, "admin/partners/partner/secret.html", context)
        response["Cache-Control"] = "no-store"
        return response


@admin.register(PartnerScope)
class PartnerScopeAdmin(admin.ModelAdmin):
    """Who is limited to which partners; users and groups without a scope see every partner."""

    list_display = ("__str__", "partners_list")
    fields = ("user", "group", "partners")
    filter_horizontal = ("partners",)
    search_fields = ("user__username", "group__name", "partners__partner_code")

    @admin.display(description="partners")
    def partners_list(self, scope: PartnerScope) -> str:
        return ", ".join(partner.partner_code for partner in scope.partners.all()) or "none"

    def get_queryset(self, request: HttpRequest) -> QuerySet[PartnerScope]:
        return super().get_queryset(request).select_related("user", "group").prefetch_related("partners")
