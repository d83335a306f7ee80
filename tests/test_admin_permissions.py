"""Every admin screen against its roles: an analyst reads and exports, and nothing that
changes anything is offered to them or done for them; a user limited to some partners gets a
404 for every page of another partner's objects, as for one that does not exist.

Both walks go over every registered admin (`admin.site._registry`) and every custom URL they
mount, so a model or a button added later is checked too, or fails here until it is
classified below.
"""

import datetime
import re
from typing import Any

import pytest
from django.contrib import admin
from django.contrib.auth.models import Group, User
from django.test import Client, RequestFactory
from django.urls import reverse

from conversions.admin.base import PartnerDatabaseAdmin
from conversions.models import PartnerConversion
from health.models import HealthSettings, Incident
from partners.models import Partner, PartnerScope
from publishers.models import Publisher
from reconciliation.models import ReconciliationRow, ReconciliationRun, ReportSource

# Actions that only read what the user may already see: the CSV (or spreadsheet) of a list.
READ_ONLY_ACTIONS = {"export_csv", "export_xlsx"}
# Models that belong to no partner: whoever may see them sees them all.
NOT_PARTNER_BOUND = {"auth.user", "auth.group", "partners.partnerscope", "authtoken.tokenproxy"}
# The standard per-model URLs Django mounts; every other URL name is a custom page.
STANDARD_URLS = {"changelist", "add", "change", "delete", "history", "autocomplete"}
# Custom pages: those that only read (an analyst may open them), and those that change
# something, with the request that would (refused to an analyst). Keyed by URL name.
READ_ONLY_URLS = {
    "partners_partner_overview",  # the dashboards
    "partners_partner_dashboard",
    "partners_partner_search",  # the search across partners
    "partners_partner_test_postback",  # maps a pasted postback; stores and sends nothing
    "publishers_publisher_report",  # a download
    "reconciliation_reportsource_preview",  # reads the network's API; stores nothing
    "reconciliation_reconciliationrun_csv",  # a download
}
CHANGING_URLS = {
    "auth_user_password_change": {"password1": "new-pw-0123456789", "password2": "new-pw-0123456789"},
    "partners_partner_secret": {"action": "rotate"},
    "publishers_publisher_deliveries": {"delivery": ["1:1"]},  # resend (reading the log is a GET)
    "reconciliation_reportsource_run": {"date_from": "2025-03-01", "date_to": "2025-03-02"},
    "reconciliation_reconciliationrun_recover": {"recover": "missing"},
}


@pytest.fixture
def backend() -> str:
    """The admin reads partner databases the same way on both backends: SQLite here."""
    return "sqlite"


def registered() -> list[tuple[str, admin.ModelAdmin]]:
    return sorted(
        ((model._meta.label_lower, model_admin) for model, model_admin in admin.site._registry.items()),
        key=lambda item: item[0],
    )


def custom_urls(model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
    """(URL name, route) of every page the admin mounts beside Django's own."""
    prefix = f"{model_admin.opts.app_label}_{model_admin.opts.model_name}_"
    found = []
    for pattern in model_admin.get_urls():
        name = pattern.name or ""
        if name.startswith(prefix) and name[len(prefix) :] in STANDARD_URLS:
            continue
        if name:
            found.append((name, str(pattern.pattern)))
    return found


def partner_objects(client: Client, partner: Partner) -> dict[str, Any]:
    """One object of each partner-bound model, belonging to `partner`."""
    response = client.get(f"/partner{partner.endpoint_path}", {"conversion_id": "X-1"})
    assert response.status_code == 200, response.content
    alias = partner.database_alias
    conversion = PartnerConversion.objects.using(alias).get(conversion_id="X-1")
    publisher = Publisher.objects.create(
        code=f"pub_{partner.partner_code}", name="P", match_regex="^X", url_template="https://pub.example/pb"
    )
    publisher.partners.add(partner)
    source = ReportSource.objects.create(partner=partner, name=f"CSV {partner.partner_code}", kind="csv")
    run = ReconciliationRun.objects.using(alias).create(
        partner_id=partner.pk,
        source_id=source.pk,
        source_name=source.name,
        date_from=datetime.date(2025, 3, 1),
        date_to=datetime.date(2025, 3, 1),
        state=ReconciliationRun.DONE,
    )
    row = ReconciliationRow.objects.using(alias).create(run=run, conversion_id="X-2", kind="missing_here", rank=0)
    return {
        "partners.partner": partner,
        "conversions.partnerconversion": conversion,
        "publishers.publisher": publisher,
        "reconciliation.reportsource": source,
        "reconciliation.reconciliationrun": run,
        "reconciliation.reconciliationrow": row,
        "health.incident": Incident.objects.create(partner=partner, rule="silent", summary="quiet"),
        "health.healthsettings": HealthSettings.objects.create(partner=partner, overrides={}),
    }


def unbound_objects() -> dict[str, Any]:
    from rest_framework.authtoken.models import Token

    other = User.objects.create_user("someone", password="pw")
    scope = PartnerScope.objects.create(user=other)
    return {
        "auth.user": other,
        "auth.group": Group.objects.get(name="Analysts"),
        "partners.partnerscope": scope,
        "authtoken.tokenproxy": Token.objects.create(user=other),
    }


def partner_query(model_admin: admin.ModelAdmin, partner: Partner) -> str:
    """The ?partner= a partner-database admin's URLs name (the others need none)."""
    return f"?partner={partner.partner_code}" if isinstance(model_admin, PartnerDatabaseAdmin) else ""


def object_url(name: str, obj: Any) -> str:
    return reverse(f"admin:{name}", args=[obj.pk])


def offered_actions(html: str) -> set[str]:
    select = re.search(r'<select name="action"[^>]*>(.*?)</select>', html, re.S)
    return {value for value in re.findall(r'<option value="([^"]*)"', select.group(1)) if value} if select else set()


def every_action(model_admin: admin.ModelAdmin, root: User) -> list[str]:
    """The actions this admin has (those a superuser is offered)."""
    request = RequestFactory().get("/admin/")
    request.user = root
    return list(model_admin.get_actions(request))


@pytest.fixture
def objects(client, users, involve):
    return {**partner_objects(client, involve), **unbound_objects()}


def test_every_model_and_custom_page_is_classified(live_db):
    labels = {label for label, _ in registered()}
    bound = {
        "partners.partner",
        "conversions.partnerconversion",
        "publishers.publisher",
        "reconciliation.reportsource",
        "reconciliation.reconciliationrun",
        "reconciliation.reconciliationrow",
        "health.incident",
        "health.healthsettings",
    }
    assert labels == bound | NOT_PARTNER_BOUND, "classify the new admin model here and in partner_objects()"
    names = {name for _, model_admin in registered() for name, _ in custom_urls(model_admin)}
    unclassified = names - READ_ONLY_URLS - set(CHANGING_URLS)
    assert not unclassified, f"say whether these pages change anything: {sorted(unclassified)}"


def test_an_analyst_is_offered_no_action_that_changes_anything_on_any_list(analyst_client, users, objects, involve):
    for label, model_admin in registered():
        url = reverse(f"admin:{model_admin.opts.app_label}_{model_admin.opts.model_name}_changelist")
        url += partner_query(model_admin, involve)
        response = analyst_client.get(url)
        assert response.status_code in (200, 403), (label, response.status_code)
        offered = offered_actions(response.content.decode()) if response.status_code == 200 else set()
        assert offered <= READ_ONLY_ACTIONS, f"{label}: an analyst is offered {sorted(offered - READ_ONLY_ACTIONS)}"


def test_posting_any_changing_action_as_an_analyst_is_refused(analyst_client, users, objects, involve):
    tried = []
    for label, model_admin in registered():
        url = reverse(f"admin:{model_admin.opts.app_label}_{model_admin.opts.model_name}_changelist")
        url += partner_query(model_admin, involve)
        for action in every_action(model_admin, users["root"]):
            if action in READ_ONLY_ACTIONS:
                continue
            data = {"action": action, "_selected_action": [objects[label].pk], "index": 0, "days": "7"}
            response = analyst_client.post(url, data, follow=True)
            page = response.content.decode()
            # Refused: forbidden, or the list again, saying so (or, offering no action at all, ignoring it).
            listed = response.status_code == 200 and 'id="changelist"' in page
            refused = response.status_code == 403 or (
                listed and ("No action selected." in page or not offered_actions(page))
            )
            assert refused, f"{label}: an analyst ran {action!r} ({response.status_code})"
            tried.append(f"{label}.{action}")
    # the actions this walk must have met (it would pass vacuously without them)
    for expected in ("publishers.publisher.pause", "publishers.publisher.backfill", "publishers.publisher.test_send"):
        assert expected in tried
    assert not Publisher.objects.get().is_paused


def test_an_analyst_cannot_add_change_or_delete_anything(analyst_client, users, objects, involve):
    for label, model_admin in registered():
        name = f"{model_admin.opts.app_label}_{model_admin.opts.model_name}"
        query = partner_query(model_admin, involve)
        obj = objects[label]
        assert analyst_client.get(reverse(f"admin:{name}_add") + query).status_code == 403, label
        delete = analyst_client.post(object_url(f"{name}_delete", obj) + query, {"post": "yes"})
        assert delete.status_code == 403, (label, delete.status_code)
        assert type(obj)._default_manager.using(obj._state.db).filter(pk=obj.pk).exists(), label
        change = analyst_client.post(object_url(f"{name}_change", obj) + query, {})
        # A run's page is read-only for everyone: it has no form a POST could submit.
        if label != "reconciliation.reconciliationrun":
            assert change.status_code == 403, (label, change.status_code)


def test_every_custom_page_that_changes_something_refuses_an_analyst(analyst_client, users, objects, involve):
    for label, model_admin in registered():
        for name, route in custom_urls(model_admin):
            if name not in CHANGING_URLS:
                continue
            args = [objects[label].pk] if "<" in route else []
            url = reverse(f"admin:{name}", args=args) + partner_query(model_admin, involve)
            response = analyst_client.post(url, CHANGING_URLS[name])
            assert response.status_code == 403, (name, response.status_code)
    assert ReconciliationRun.objects.using(involve.database_alias).count() == 1  # no run queued


def test_a_scoped_user_gets_404_for_every_page_of_another_partners_objects(client, users, involve, rector):
    theirs = partner_objects(client, involve)
    others = partner_objects(client, rector)
    user = User.objects.create_user("ia_manager", password="pw", is_staff=True)
    user.groups.add(Group.objects.get(name="Account managers"))
    PartnerScope.objects.create(user=user).partners.add(involve)
    scoped = Client()
    scoped.force_login(user)
    failures = []
    for label, model_admin in registered():
        if label in NOT_PARTNER_BOUND:
            continue
        name = f"{model_admin.opts.app_label}_{model_admin.opts.model_name}"
        query = partner_query(model_admin, rector)
        other = others[label]
        pages = [(f"{name}_{page}", "GET") for page in ("change", "delete", "history")]
        pages += [(f"{name}_change", "POST"), (f"{name}_delete", "POST")]
        pages += [
            (url, "POST" if url in CHANGING_URLS else "GET") for url, route in custom_urls(model_admin) if "<" in route
        ]
        for url_name, method in pages:
            url = object_url(url_name, other) + query
            response = scoped.post(url, CHANGING_URLS.get(url_name, {})) if method == "POST" else scoped.get(url)
            if response.status_code != 404:
                failures.append(f"{method} {url} ({label}): {response.status_code}")
        # the same pages of their own partner's object are not 404
        mine = scoped.get(object_url(f"{name}_change", theirs[label]) + partner_query(model_admin, involve))
        if mine.status_code == 404:
            failures.append(f"{label}: their own object answers 404")
    assert not failures, "\n".join(failures)
