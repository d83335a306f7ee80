"""The admin of models that live in partner databases: conversions here, reconciliation runs
and rows in the reconciliation app (which imports this module; this one imports neither).

Such a list always names its partner (`?partner=<code>`) and every query goes through
`get_queryset`, which adds `.using(partner.database_alias)`: Django's documented
multi-database admin pattern. The filters below are the ones both apps' lists use.
"""

from collections.abc import Sequence

from django.contrib import admin, messages
from django.core.exceptions import BadRequest, ImproperlyConfigured, ValidationError
from django.db import DEFAULT_DB_ALIAS, DatabaseError, transaction
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponseRedirect, QueryDict
from django.urls import reverse

from infra.databases import PartnerDatabaseUnavailable
from partners.models import Partner
from partners.selectors import partners_visible_to

PARTNER_PARAM = "partner"


class PartnerChooser(admin.SimpleListFilter):
    """Which partner's database the list shows; kept in every filter link."""

    title = "partner"
    parameter_name = PARTNER_PARAM

    def __init__(self, request, params, model, model_admin):
        self.current = model_admin.partner_for(request)
        super().__init__(request, params, model, model_admin)

    def lookups(self, request, model_admin):
        return [(p.partner_code, str(p)) for p in partners_visible_to(request.user).order_by("partner_code")]

    def queryset(self, request, queryset):
        return None  # the database itself is chosen in get_queryset

    def choices(self, changelist):
        for code, label in self.lookup_choices:
            yield {
                "selected": self.current is not None and self.current.partner_code == code,
                # Switching partner starts from that partner's unfiltered list.
                "query_string": f"?{PARTNER_PARAM}={code}",
                "display": label,
            }


class ChoiceFilter(admin.SimpleListFilter):
    """One value of a column among fixed choices, `?<column>=<value>`: the choices are known,
    so listing them costs no DISTINCT query over millions of rows. Make one with choice_filter()."""

    field_choices: Sequence[tuple[str, str]] = ()

    def lookups(self, request, model_admin):
        return self.field_choices

    def queryset(self, request, queryset):
        value = self.value()
        return queryset.filter(**{self.parameter_name: value}) if value else None


def choice_filter(field_name: str, choices: Sequence[tuple[str, str]], *, title: str = "") -> type[ChoiceFilter]:
    """A list filter on `field_name` offering `choices` (e.g. a status, a run's state, a row's kind)."""
    attributes = {"title": title or field_name, "parameter_name": field_name, "field_choices": tuple(choices)}
    return type(f"{field_name.title().replace('_', '')}Filter", (ChoiceFilter,), attributes)


class TextInputFilter(admin.SimpleListFilter):
    """An exact-match text box (no DISTINCT query over millions of rows to list choices)."""

    template = "admin/conversions/text_input_filter.html"
    field_name = ""

    def lookups(self, request, model_admin):
        return ()

    def has_output(self) -> bool:
        return True

    def queryset(self, request, queryset):
        value = (self.value() or "").strip()
        return queryset.filter(**{self.field_name: value}) if value else None

    def choices(self, changelist):
        yield {
            "value": self.value() or "",
            "parameter_name": self.parameter_name,
            "hidden": [
                (key, value)
                for key, value in changelist.get_filters_params().items()
                if key not in {self.parameter_name, "p"}
                for value in (value if isinstance(value, list) else [value])
            ],
            # Not "p" (the page is never among the filters): removal is by prefix, it would drop `partner`.
            "clear_query_string": changelist.get_query_string(remove=[self.parameter_name]),
        }


class PartnerDatabaseAdmin(admin.ModelAdmin):
    """An admin of a model that lives in partner databases: the list names its partner
    (`?partner=<code>`) and every query goes to that partner's alias (get_queryset, and the
    change form's transaction)."""

    # --- which partner ----------------------------------------------------------

    def partner_for(self, request: HttpRequest) -> Partner | None:
        """The partner named by ?partner= (also inside _changelist_filters), else the first one."""
        if not hasattr(request, "_conversions_partner"):
            code = request.GET.get(PARTNER_PARAM) or QueryDict(request.GET.get("_changelist_filters", "")).get(
                PARTNER_PARAM
            )
            if code:
                try:
                    Partner._meta.get_field("partner_code").run_validators(code)
                except ValidationError:
                    # Not a code any partner can have (e.g. %00, which PostgreSQL cannot even compare).
                    raise BadRequest(f"partner: {code[:60]!r} is not a partner code") from None
            partners = partners_visible_to(request.user).order_by("-is_active", "partner_code")
            request._conversions_partner = partners.filter(partner_code=code).first() if code else partners.first()
            if code and request._conversions_partner is None:
                # Unknown, or another partner's (PartnerScope): the same answer for both.
                raise Http404(f"There is no partner '{code[:60]}' among yours.")
        return request._conversions_partner

    def partner_alias(self, request: HttpRequest) -> str:
        partner = self.partner_for(request)
        return partner.database_alias if partner is not None else DEFAULT_DB_ALIAS

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        queryset = super().get_queryset(request)
        if self.partner_for(request) is None:
            return queryset.none().using(DEFAULT_DB_ALIAS)
        return queryset.using(self.partner_alias(request))

    def changelist_view(self, request: HttpRequest, extra_context=None):
        code = request.GET.get(PARTNER_PARAM)
        partner = self.partner_for(request)
        if partner is None:
            self.message_user(request, "Add a partner first: its conversions live in its own database.", messages.INFO)
            return HttpResponseRedirect(reverse("admin:partners_partner_changelist"))
        if not code and request.method == "GET":
            # Name the partner in the URL, so every link (filters, rows, exports) keeps it.
            query = request.GET.copy()
            query[PARTNER_PARAM] = partner.partner_code
            return HttpResponseRedirect(f"{request.path}?{query.urlencode()}")
        extra_context = {
            **(extra_context or {}),
            "partner": partner,
            "partners": partners_visible_to(request.user),
            # Ten columns and the filters fit 1400 px only without the app list beside them
            # (the breadcrumbs still lead back).
            "is_nav_sidebar_enabled": False,
        }
        try:
            response = super().changelist_view(request, extra_context)
            if hasattr(response, "render"):
                response.render()
        except (DatabaseError, PartnerDatabaseUnavailable, ImproperlyConfigured) as exc:
            self.message_user(
                request,
                f"The database of partner '{partner.partner_code}' cannot be read: {str(exc).strip()[:200]}",
                messages.ERROR,
            )
            return HttpResponseRedirect(reverse("admin:partners_partner_changelist"))
        return response

    def changeform_view(self, request: HttpRequest, object_id=None, form_url="", extra_context=None):
        # ModelAdmin opens its transaction on router.db_for_write(model), which cannot know
        # the partner; the partner's own alias is the right one. ModelAdmin._changeform_view
        # is private (checked against Django 5.2): changeform_view is it inside that transaction.
        try:
            with transaction.atomic(using=self.partner_alias(request)):
                response = self._changeform_view(request, object_id, form_url, extra_context)
                if hasattr(response, "render"):
                    response.render()
                return response
        except (DatabaseError, ImproperlyConfigured) as exc:
            self.message_user(
                request, f"This partner's database cannot be read: {str(exc).strip()[:200]}", messages.ERROR
            )
            return HttpResponseRedirect(reverse("admin:partners_partner_changelist"))
