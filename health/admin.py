"""The channel health admin: incidents (read-only, with their history and notifications) and
each partner's threshold overrides. The health page itself is this app's admin index,
`/admin/health/` (templates/admin/health/app_index.html, its rows from health/overview.py).

A user limited to some partners (PartnerScope) sees only their incidents and settings: another
partner's incident answers 404, as an unknown one does.
"""

import datetime
import json

from django import forms
from django.contrib import admin
from django.db.models import QuerySet
from django.http import Http404, HttpRequest
from django.utils import timezone
from django.utils.html import format_html

from conversions.admin.base import choice_filter
from health.models import RULES, HealthSettings, Incident, IncidentEvent, Notification
from partners.selectors import partners_visible_to
from reconciliation.admin import VisiblePartnerFilter

RULE_NAMES = [name for name, _ in RULES]


def duration_in_words(delta: datetime.timedelta) -> str:
    """ "2 d 3 h", "3 h 12 min", "4 min"."""
    minutes = int(delta.total_seconds() // 60)
    days, minutes = divmod(minutes, 24 * 60)
    hours, minutes = divmod(minutes, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min"


class PartnerScopedAdmin(admin.ModelAdmin):
    """An admin of rows that belong to a partner: only the user's partners, and 404 for any other."""

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).filter(partner__in=partners_visible_to(request.user))

    def get_object(self, request: HttpRequest, object_id: str, from_field=None):
        found = super().get_object(request, object_id, from_field)
        if found is None:
            # Unknown, or another partner's: the same answer for both, and no redirect that says which.
            raise Http404(f"There is no {self.opts.verbose_name} {str(object_id)[:20]!r} among yours.")
        return found

    def formfield_for_foreignkey(self, db_field, request: HttpRequest, **kwargs):
        if db_field.name == "partner":
            kwargs["queryset"] = partners_visible_to(request.user)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)


class IncidentPartsInline(admin.TabularInline):
    """Part of an incident's record: shown to whoever may view the incident, never edited."""

    extra = 0
    can_delete = False

    def has_view_permission(self, request: HttpRequest, obj=None) -> bool:
        return request.user.has_perm("health.view_incident")

    def has_add_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


class IncidentEventInline(IncidentPartsInline):
    model = IncidentEvent
    verbose_name = "event"
    verbose_name_plural = "history"
    fields = ("at", "kind", "text", "evidence_text")
    readonly_fields = fields

    @admin.display(description="evidence")
    def evidence_text(self, event: IncidentEvent) -> str:
        return _json_block(event.evidence)


class NotificationInline(IncidentPartsInline):
    model = Notification
    fields = ("event", "channel", "recipients", "state", "attempts", "last_error", "sent_at", "next_attempt_at")
    readonly_fields = fields


def _json_block(value) -> str:
    if not value:
        return "-"
    return format_html('<pre style="margin:0;white-space:pre-wrap">{}</pre>', json.dumps(value, indent=2, default=str))


@admin.register(Incident)
class IncidentAdmin(PartnerScopedAdmin):
    list_display = ("partner", "rule", "subject", "state", "summary", "opened_at", "resolved_at", "duration")
    list_filter = (choice_filter("state", Incident.STATES), choice_filter("rule", RULES), VisiblePartnerFilter)
    list_select_related = ("partner",)
    search_fields = ("summary", "subject")
    date_hierarchy = "opened_at"
    fields = (
        "partner",
        "rule",
        "subject",
        "state",
        "summary",
        "evidence_text",
        "opened_at",
        "updated_at",
        "resolved_at",
        "duration",
    )
    readonly_fields = fields
    inlines = (IncidentEventInline, NotificationInline)

    # The checker opens, updates and resolves incidents; people read them.
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    @admin.display(description="duration")
    def duration(self, incident: Incident) -> str:
        end = incident.resolved_at or timezone.now()
        words = duration_in_words(end - incident.opened_at)
        return words if incident.resolved_at else f"{words} (open)"

    @admin.display(description="evidence")
    def evidence_text(self, incident: Incident) -> str:
        return _json_block(incident.evidence)


class HealthSettingsForm(forms.ModelForm):
    class Meta:
        model = HealthSettings
        fields = ("partner", "overrides")

    def clean_overrides(self) -> dict:
        overrides = self.cleaned_data.get("overrides")
        if overrides in (None, ""):
            return {}
        if not isinstance(overrides, dict):
            raise forms.ValidationError('A JSON object of rules, e.g. {"silent": {"floor_minutes": 60}}.')
        unknown = sorted(str(rule) for rule in overrides if rule not in RULE_NAMES)
        if unknown:
            raise forms.ValidationError(
                f"Not a rule: {', '.join(unknown)}. The rules are: {', '.join(RULE_NAMES)}.", code="unknown_rule"
            )
        not_objects = sorted(rule for rule, value in overrides.items() if not isinstance(value, dict))
        if not_objects:
            raise forms.ValidationError(
                'Each rule takes a JSON object of its thresholds (e.g. {"enabled": false}): '
                f"not so for {', '.join(not_objects)}.",
                code="not_an_object",
            )
        return overrides


@admin.register(HealthSettings)
class HealthSettingsAdmin(PartnerScopedAdmin):
    form = HealthSettingsForm
    list_display = ("partner", "rules_overridden")
    list_select_related = ("partner",)
    list_filter = (VisiblePartnerFilter,)

    @admin.display(description="rules overridden")
    def rules_overridden(self, settings: HealthSettings) -> str:
        return ", ".join(sorted(settings.overrides or {})) or "-"
