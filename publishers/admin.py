"""Admin for publishers: matching, payout and template, with a URL preview, the last 100
conversions' match check, a test send, the delivery log (resend, filters), pause/resume,
backfill and reports. The conversion page shows its deliveries."""

import datetime

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ActionForm
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

from conversions.admin.conversions import ConversionAdminExtension, ConversionSection, conversion_admin_extend
from conversions.models import ORIGINAL, PartnerConversion
from infra.databases import PartnerDatabaseUnavailable, partner_database
from partners.models import Partner
from partners.selectors import partner_scope_applies, partners_visible_to
from publishers.deliveries import delivery_values
from publishers.models import (
    DEFAULT_EVENTS,
    DELIVERY_STATES,
    EVENT_CHOICES,
    NO_EVENT,
    Delivery,
    DeliveryAttempt,
    Publisher,
    PublisherOfferPayout,
)
from publishers.reports import XLSX_TYPE, publisher_report, report_csv, report_xlsx
from publishers.selectors import (
    RECENT_CONVERSIONS,
    publisher_partners,
    publisher_recent_conversion,
    publisher_route,
)
from publishers.services import (
    deliveries_resend,
    publisher_backfill,
    publisher_pause,
    publisher_resume,
    publisher_save,
    publisher_test_send,
)

RECENT = RECENT_CONVERSIONS
LOG_ROWS = 200


class PublisherForm(forms.ModelForm):
    events = forms.MultipleChoiceField(
        choices=EVENT_CHOICES,
        widget=forms.CheckboxSelectMultiple,
        initial=DEFAULT_EVENTS,
        error_messages={"required": NO_EVENT},
        help_text="What sends a postback (at least one).",
    )
    signing_secret = forms.CharField(
        required=False,
        widget=forms.PasswordInput(render_value=False),
        help_text="Write-only: leave empty to keep the current one.",
    )
    clear_signing_secret = forms.BooleanField(required=False, label="Remove the signing secret")

    class Meta:
        model = Publisher
        fields = (
            "code",
            "name",
            "is_active",
            "partners",
            "match_field",
            "match_prefixes",
            "match_regex",
            "url_template",
            "http_method",
            "events",
            "payout_kind",
            "payout_value",
            "signing_secret",
            "report_recipients",
        )
        widgets = {
            # Long templates are read whole: a full-width box that wraps (a URL holds no line break).
            "url_template": forms.Textarea(attrs={"rows": 6, "class": "vLargeTextField url-template", "wrap": "soft"}),
            "match_prefixes": forms.Textarea(attrs={"rows": 3}),
            "report_recipients": forms.Textarea(attrs={"rows": 2}),
        }

    def clean_signing_secret(self) -> str:
        secret = self.cleaned_data.get("signing_secret") or ""
        if self.data.get("clear_signing_secret"):
            return ""
        return secret or (self.instance.signing_secret if self.instance.pk else "")


class PublisherActionForm(ActionForm):
    # The range is checked by the action: an invalid action form would silently run nothing.
    days = forms.IntegerField(
        required=False,
        initial=7,
        label="Backfill: days",
        help_text="for the backfill action",
    )


class OfferPayoutInline(admin.TabularInline):
    model = PublisherOfferPayout
    extra = 1


class ReportForm(forms.Form):
    start = forms.DateField(widget=forms.DateInput(attrs={"type": "date"}))
    end = forms.DateField(widget=forms.DateInput(attrs={"type": "date"}))
    format = forms.ChoiceField(choices=[("csv", "CSV"), ("xlsx", "XLSX")], initial="xlsx")

    def clean(self):
        data = super().clean()
        if data.get("start") and data.get("end") and data["end"] < data["start"]:
            raise forms.ValidationError("The end date is before the start date.")
        if data.get("start") and data.get("end") and (data["end"] - data["start"]).days > 400:
            raise forms.ValidationError("A report covers at most 400 days.")
        return data


@admin.register(Publisher)
class PublisherAdmin(admin.ModelAdmin):
    form = PublisherForm
    inlines = (OfferPayoutInline,)
    action_form = PublisherActionForm
    actions = ("pause", "resume", "backfill", "test_send")
    list_display = ("code", "name", "is_active", "state_label", "matching_label", "payout_label", "log_link")
    list_filter = ("is_active", ("paused_at", admin.EmptyFieldListFilter))
    search_fields = ("code", "name")
    readonly_fields = (
        "consecutive_failures",
        "paused_at",
        "paused_reason",
        "url_preview",
        "recent_matches",
        "log_link",
    )
    fieldsets = (
        (None, {"fields": ("code", "name", "is_active", "paused_at", "paused_reason", "consecutive_failures")}),
        (
            "Which conversions are its own",
            {"fields": ("partners", "match_field", "match_prefixes", "match_regex", "recent_matches")},
        ),
        (
            "Postback",
            {
                "fields": (
                    "url_template",
                    "http_method",
                    "events",
                    "url_preview",
                    "signing_secret",
                    "clear_signing_secret",
                )
            },
        ),
        ("Payout", {"fields": ("payout_kind", "payout_value")}),
        ("Reports and log", {"fields": ("report_recipients", "log_link")}),
    )
    filter_horizontal = ("partners",)

    def changelist_view(self, request: HttpRequest, extra_context=None):
        # Seven columns fit 1400 px only without the app list beside them (the breadcrumbs lead back).
        return super().changelist_view(request, {"is_nav_sidebar_enabled": False, **(extra_context or {})})

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        publisher_save(publisher=obj)

    def save_related(self, request, form, formsets, change):
        super().save_related(request, form, formsets, change)
        publisher_save(publisher=form.instance)  # its partners and offer payouts are saved now

    # --- columns and read-only fields ---------------------------------------------

    @admin.display(description="state")
    def state_label(self, publisher: Publisher) -> str:
        if not publisher.is_active:
            return "inactive"
        return f"paused: {publisher.paused_reason}" if publisher.is_paused else "sending"

    @admin.display(description="matches")
    def matching_label(self, publisher: Publisher) -> str:
        rule = publisher.match_regex or "prefix " + ", ".join(publisher.prefixes)
        return f"{publisher.match_field} {rule}"

    @admin.display(description="payout")
    def payout_label(self, publisher: Publisher) -> str:
        unit = (
            "USD"
            if publisher.payout_kind == "fixed"
            else ("% of sale" if publisher.payout_kind == "percent_sale" else "% of earning")
        )
        return f"{publisher.payout_value.normalize():f} {unit}"

    @admin.display(description="delivery log")
    def log_link(self, publisher: Publisher) -> str:
        if not publisher.pk:
            return "-"
        url = reverse("admin:publishers_publisher_deliveries", args=[publisher.pk])
        report = reverse("admin:publishers_publisher_report", args=[publisher.pk])
        return format_html(
            '<a href="{}">all</a> · <a href="{}?state=pending">pending</a> · <a href="{}?state=failed">failed</a>'
            ' · <a href="{}">report</a>',
            url,
            url,
            url,
            report,
        )

    @admin.display(description="URL preview")
    def url_preview(self, publisher: Publisher) -> str:
        if not publisher.pk:
            return "Save the publisher to preview its postback for a recent conversion."
        found = publisher_recent_conversion(publisher=publisher)
        if found is None:
            return "No conversion recorded yet to preview with."
        partner, conversion, matched = found
        values = delivery_values(
            route=publisher_route(publisher),
            conversion=conversion.canonical_values(),
            partner=partner,
            event="recorded",
            source="preview",
        )
        which = "its newest matching conversion" if matched else "the newest conversion (none of the last 100 matches)"
        body = format_html("<br>body: <code>{}</code>", values["body"]) if values["body"] else ""
        return format_html(
            '<code id="url-preview">{} {}</code>{}<br><span class="help">For {} {} of {} (payout {}).</span>',
            values["method"],
            values["url"],
            body,
            which,
            conversion.conversion_id,
            partner.partner_code,
            values["payout"],
        )

    @admin.display(description="last 100 conversions")
    def recent_matches(self, publisher: Publisher) -> str:
        if not publisher.pk:
            return "-"
        route = publisher_route(publisher)
        lines = []
        for partner in publisher_partners(publisher):
            try:
                with partner_database(partner) as alias:
                    recent = list(
                        PartnerConversion.objects.using(alias).filter(ORIGINAL).order_by("-received_at", "-id")[:RECENT]
                    )
            except PartnerDatabaseUnavailable as exc:
                lines.append((partner.partner_code, f"unavailable: {exc.reason}"))
                continue
            if not recent:
                continue  # a network without conversions says nothing about the rule
            matched = [c for c in recent if route.matches({route.match_field: getattr(c, route.match_field)})]
            shown = ", ".join(f"{c.conversion_id} ({getattr(c, route.match_field)})" for c in matched[:20])
            lines.append(
                (partner.partner_code, f"{len(matched)} of {len(recent)} match{': ' + shown if shown else ''}")
            )
        if not lines:
            return "None of its networks has a conversion yet."
        return format_html_join(mark_safe("<br>"), "{}: {}", lines)  # noqa: S308 - a literal

    # --- actions ------------------------------------------------------------------

    def _may_change(self, request: HttpRequest) -> None:
        # `permissions=["change"]` keeps them off a reader's list; this refuses any other way in.
        if not self.has_change_permission(request):
            raise PermissionDenied

    @admin.action(description="Pause the selected publishers", permissions=["change"])
    def pause(self, request, queryset):
        self._may_change(request)
        for publisher in queryset:
            publisher_pause(publisher=publisher, reason=f"paused by {request.user.get_username()}")
        self.message_user(request, f"Paused {queryset.count()} publisher(s): their deliveries wait until resumed.")

    @admin.action(description="Resume the selected publishers", permissions=["change"])
    def resume(self, request, queryset):
        self._may_change(request)
        for publisher in queryset:
            publisher_resume(publisher=publisher)
        self.message_user(request, f"Resumed {queryset.count()} publisher(s).")

    @admin.action(
        description="Backfill: send the matching conversions of the last N days never sent", permissions=["change"]
    )
    def backfill(self, request, queryset):
        self._may_change(request)
        try:
            days = forms.IntegerField(min_value=1, max_value=400).clean(request.POST.get("days"))
        except forms.ValidationError:
            self.message_user(request, "Backfill: give a number of days from 1 to 400.", messages.ERROR)
            return
        for publisher in queryset:
            try:
                written = publisher_backfill(publisher=publisher, days=days)
            except PartnerDatabaseUnavailable as exc:
                self.message_user(request, f"{publisher.code}: backfill stopped, {exc}", messages.ERROR)
                continue
            self.message_user(request, f"{publisher.code}: {written} conversion(s) of the last {days} days queued.")

    @admin.action(
        description="Test send: the newest matching conversion, now (not logged as a delivery)",
        permissions=["change"],
    )
    def test_send(self, request, queryset):
        self._may_change(request)
        for publisher in queryset:
            sent = publisher_test_send(publisher=publisher)
            if sent is None:
                self.message_user(
                    request, f"{publisher.code}: none of the last {RECENT} conversions matches.", messages.WARNING
                )
                continue
            result = sent.answer
            level = messages.SUCCESS if result.succeeded else messages.ERROR
            answer = f"HTTP {result.status_code}" if result.status_code else result.error
            self.message_user(
                request,
                f"{publisher.code}: {sent.method} {sent.url} -> {answer} in {result.duration_ms} ms "
                f"{result.excerpt[:200]}",
                level,
            )

    # --- the delivery log and the report ----------------------------------------------

    def get_urls(self):
        view = self.admin_site.admin_view
        return [
            path("<path:object_id>/deliveries/", view(self.deliveries_view), name="publishers_publisher_deliveries"),
            path("<path:object_id>/report/", view(self.report_view), name="publishers_publisher_report"),
            *super().get_urls(),
        ]

    def get_queryset(self, request: HttpRequest):
        # A user limited to some partners sees a publisher only when every partner whose
        # conversions it may match is theirs (one matching every partner: none of them).
        publishers = super().get_queryset(request)
        if not partner_scope_applies(request.user):
            return publishers
        others = Partner.objects.exclude(pk__in=partners_visible_to(request.user).values("pk"))
        return publishers.filter(partners__isnull=False).exclude(partners__in=others).distinct()

    def get_form(self, request: HttpRequest, obj=None, change=False, **kwargs):
        form = super().get_form(request, obj, change, **kwargs)
        if not partner_scope_applies(request.user) or "partners" not in form.base_fields:
            return form

        class ScopedPublisherForm(form):
            def clean_partners(self):
                partners = self.cleaned_data.get("partners")
                if not partners:
                    raise forms.ValidationError("Choose the partners (among yours) whose conversions it receives.")
                return partners

        return ScopedPublisherForm

    def formfield_for_manytomany(self, db_field, request: HttpRequest, **kwargs):
        if db_field.name == "partners":
            kwargs["queryset"] = partners_visible_to(request.user)
        return super().formfield_for_manytomany(db_field, request, **kwargs)

    def get_object(self, request: HttpRequest, object_id: str, from_field=None) -> Publisher:
        """The publisher, or a 404 when there is none the user may see (change, delete, history
        and the log and report pages alike; Django's default is a redirect saying it does not exist)."""
        publisher = super().get_object(request, object_id, from_field)
        if publisher is None:
            raise Http404(f"There is no publisher {str(object_id)[:40]!r} among yours.")
        return publisher

    def _publisher(self, request: HttpRequest, object_id: str) -> Publisher:
        publisher = self.get_object(request, object_id)
        if not self.has_view_or_change_permission(request, publisher):
            raise PermissionDenied
        return publisher

    def deliveries_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        publisher = self._publisher(request, object_id)
        state = request.GET.get("state", "")
        if state not in {"", *(value for value, _label in DELIVERY_STATES)}:
            state = ""
        partners = {p.pk: p for p in publisher_partners(publisher)}
        if request.method == "POST":
            if not self.has_change_permission(request, publisher):
                raise PermissionDenied
            resent = 0
            for partner_id, partner in partners.items():
                ids = [
                    int(v.split(":")[1])
                    for v in request.POST.getlist("delivery")
                    if v.split(":")[0] == str(partner_id) and v.split(":")[1].isdigit()
                ]
                if ids:
                    resent += deliveries_resend(partner=partner, delivery_ids=ids)
            self.message_user(request, f"{resent} deliveries queued to be sent again (same idempotency key).")
            return redirect(request.get_full_path())
        rows, unavailable = [], []
        for partner in partners.values():
            try:
                with partner_database(partner) as alias:
                    deliveries = Delivery.objects.using(alias).filter(publisher_id=publisher.pk)
                    if state:
                        deliveries = deliveries.filter(state=state)
                    found = list(deliveries.order_by("-created_at", "-id")[:LOG_ROWS])
                    last = {}
                    for attempt in (
                        DeliveryAttempt.objects.using(alias)
                        .filter(delivery_id__in=[d.pk for d in found])
                        .order_by("number")
                    ):
                        last[attempt.delivery_id] = attempt
            except PartnerDatabaseUnavailable as exc:
                unavailable.append(f"{partner.partner_code}: {exc.reason}")
                continue
            rows += [(partner, delivery, last.get(delivery.pk)) for delivery in found]
        rows.sort(key=lambda row: row[1].created_at, reverse=True)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "original": publisher,
            "title": f"Deliveries to {publisher.name}",
            "rows": rows[:LOG_ROWS],
            "state": state,
            "states": DELIVERY_STATES,
            "unavailable": unavailable,
            "can_resend": self.has_change_permission(request, publisher),
        }
        return TemplateResponse(request, "admin/publishers/publisher/deliveries.html", context)

    def report_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        publisher = self._publisher(request, object_id)
        today = timezone.localdate()
        monday = today - datetime.timedelta(days=today.weekday() + 7)
        form = ReportForm(request.GET or None, initial={"start": monday, "end": monday + datetime.timedelta(days=6)})
        if form.is_valid():
            report = publisher_report(
                publisher=publisher, start=form.cleaned_data["start"], end=form.cleaned_data["end"]
            )
            if form.cleaned_data["format"] == "csv":
                response = HttpResponse(report_csv(report), content_type="text/csv; charset=utf-8")
            else:
                response = HttpResponse(report_xlsx(report), content_type=XLSX_TYPE)
            response["Content-Disposition"] = f'attachment; filename="{report.name}.{form.cleaned_data["format"]}"'
            return response
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "original": publisher,
            "title": f"Report for {publisher.name}",
            "form": form,
        }
        return TemplateResponse(
            request, "admin/publishers/publisher/report.html", context, status=400 if request.GET else 200
        )


# --- a conversion's page: the postbacks sent to publishers for it ---------------------------


@admin.display(description="deliveries")
def deliveries_table(conversion: PartnerConversion) -> str:
    alias = conversion._state.db
    deliveries = list(Delivery.objects.using(alias).filter(conversion_id=conversion.pk).order_by("created_at", "id"))
    if not deliveries:
        return "No postback was owed to a publisher for this conversion."
    names = dict(Publisher.objects.filter(pk__in={d.publisher_id for d in deliveries}).values_list("pk", "code"))
    return format_html(
        '<table id="conversion-deliveries"><thead><tr><th>publisher</th><th>event</th><th>state</th>'
        "<th>attempts</th><th>last answer</th><th>next try</th><th>URL</th></tr></thead><tbody>{}</tbody></table>",
        format_html_join(
            "",
            "<tr><td><a href='{}'>{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>"
            "<td><code>{}</code></td></tr>",
            (
                (
                    reverse("admin:publishers_publisher_deliveries", args=[d.publisher_id]),
                    names.get(d.publisher_id, f"#{d.publisher_id}"),
                    d.event,
                    d.state,
                    d.attempts,
                    d.last_status_code or d.last_error or "-",
                    d.next_attempt_at.isoformat(timespec="seconds") if d.state == "pending" else "-",
                    d.url,
                )
                for d in deliveries
            ),
        ),
    )


conversion_admin_extend(
    app_label="publishers",
    extension=ConversionAdminExtension(sections=(ConversionSection("Publisher postbacks", (deliveries_table,)),)),
)
