"""Partner scopes: a user or a group limited to some partners, in every admin page and the API."""

import re

import pytest
from django.contrib.auth.models import Group, User
from rest_framework.authtoken.models import Token

from conversions.models import PartnerConversion
from partners.models import Partner, PartnerScope
from partners.selectors import partner_is_visible_to, partners_visible_to

CONVERSIONS = "/admin/conversions/partnerconversion/"


@pytest.fixture
def backend() -> str:
    return "sqlite"  # scopes live in `default`; which backend holds the conversions does not matter


def codes(queryset) -> list[str]:
    return [partner.partner_code for partner in queryset]


@pytest.fixture
def scoped(users, involve, rector) -> User:
    """An analyst limited to InvolveAsia by a scope of their own."""
    user = User.objects.create_user("ia_analyst", password="pw", is_staff=True)
    user.groups.add(Group.objects.get(name="Analysts"))
    PartnerScope.objects.create(user=user).partners.add(involve)
    return user


@pytest.fixture
def scoped_client(client, scoped):
    client.force_login(scoped)
    return client


def fresh(user: User) -> User:
    return User.objects.get(pk=user.pk)  # the per-request cache starts empty, as in a request


def test_visible_partners_follow_user_and_group_scopes(users, involve, rector, make_partner):
    shopback = make_partner("shopback")
    analyst, root = users["analyst"], users["root"]
    assert codes(partners_visible_to(fresh(analyst))) == ["involve_asia", "rector", "shopback"]  # unscoped

    group = Group.objects.create(name="Rector team")
    PartnerScope.objects.create(group=group).partners.add(rector)
    analyst.groups.add(group)
    assert codes(partners_visible_to(fresh(analyst))) == ["rector"]  # the unscoped Analysts group does not widen it
    PartnerScope.objects.create(user=analyst).partners.add(shopback)
    assert codes(partners_visible_to(fresh(analyst))) == ["rector", "shopback"]  # scopes add up
    assert partner_is_visible_to(fresh(analyst), shopback) and not partner_is_visible_to(fresh(analyst), involve)

    empty = User.objects.create_user("nobody", password="pw")
    PartnerScope.objects.create(user=empty)
    assert codes(partners_visible_to(fresh(empty))) == []  # a scope without partners shows none
    PartnerScope.objects.create(user=root)
    assert len(partners_visible_to(fresh(root))) == 3  # superusers see everything
    from django.contrib.auth.models import AnonymousUser

    assert codes(partners_visible_to(AnonymousUser())) == []


def test_a_scope_names_a_user_or_a_group_not_both(users):
    from django.core.exceptions import ValidationError
    from django.db import IntegrityError, transaction

    with pytest.raises(ValidationError):
        PartnerScope().full_clean()
    with pytest.raises(IntegrityError), transaction.atomic():
        PartnerScope.objects.create(user=users["analyst"], group=Group.objects.get(name="Analysts"))


def test_scoped_analyst_sees_only_their_partners_in_every_admin_page(scoped_client, involve, rector):
    scoped_client.get("/partner/involve/event?conversion_id=IA-1&aff_sub=s1")
    scoped_client.get("/partner/rector/event?conversion_id=R-1&sub_id=s2")
    rector_row = PartnerConversion.objects.using(rector.database_alias).get()

    listed = scoped_client.get("/admin/partners/partner/").content.decode()
    assert "involve_asia_db" in listed and "rector" not in listed
    chooser = scoped_client.get(f"{CONVERSIONS}?partner=involve_asia").content.decode()
    assert re.findall(r'<option value="([a-z_]+)"', chooser.split('id="partner-select"')[1].split("</select>")[0]) == [
        "involve_asia"
    ]
    assert "R-1" not in chooser and "rector" not in chooser.lower()
    assert scoped_client.get(CONVERSIONS).url == f"{CONVERSIONS}?partner=involve_asia"
    overview = scoped_client.get("/admin/partners/partner/dashboard/?time_field=received_at").content.decode()
    assert "InvolveAsia" in overview and "Rector" not in overview and "rector" not in overview

    for url in (
        f"/admin/partners/partner/{rector.pk}/change/",
        f"/admin/partners/partner/{rector.pk}/history/",
        f"/admin/partners/partner/{rector.pk}/test-postback/",
        f"/admin/partners/partner/{rector.pk}/dashboard/",
        f"{CONVERSIONS}?partner=rector",
        f"{CONVERSIONS}{rector_row.pk}/change/?partner=rector",
        f"{CONVERSIONS}?partner=rector&format=csv",
    ):
        assert scoped_client.get(url).status_code == 404, url
    exported = scoped_client.post(
        f"{CONVERSIONS}?partner=rector", {"action": "export_csv", "select_across": "1", "_selected_action": "1"}
    )
    assert exported.status_code == 404
    assert scoped_client.get(f"/admin/partners/partner/{involve.pk}/dashboard/").status_code == 200
    assert scoped_client.get(f"/admin/partners/partner/{involve.pk}/change/").status_code == 200


def test_unknown_partner_code_is_a_404_like_a_hidden_one(analyst_client, involve):
    assert analyst_client.get(f"{CONVERSIONS}?partner=nobody").status_code == 404
    assert analyst_client.get("/admin/partners/partner/999999/change/").status_code == 404


def test_scoped_api_token_reads_only_its_partners(client, scoped, involve, rector):
    client.defaults["HTTP_AUTHORIZATION"] = f"Token {Token.objects.create(user=scoped).key}"
    for path in ("stats", "conversions", "conversions?format=csv"):
        assert client.get(f"/partner/involve/event/{path}").status_code == 200, path
        hidden = client.get(f"/partner/rector/event/{path}")
        assert hidden.status_code == 404, path
        assert hidden.json() == {"detail": "No active partner at endpoint '/rector/event'."}  # as if there were none


def test_scope_admin_lists_who_sees_what(client, users, scoped):
    client.force_login(users["root"])
    page = client.get("/admin/partners/partnerscope/").content.decode()
    assert "Partners of user ia_analyst" in page and "involve_asia" in page
    involve = Partner.objects.get(partner_code="involve_asia")
    added = client.post(
        "/admin/partners/partnerscope/add/",
        {"group": Group.objects.get(name="Account managers").pk, "partners": [involve.pk]},
    )
    assert added.status_code == 302
    both = client.post(
        "/admin/partners/partnerscope/add/",
        {"user": users["analyst"].pk, "group": Group.objects.get(name="Analysts").pk},
    )
    assert "Choose either a user or a group" in both.content.decode()


def test_a_scoped_account_manager_sees_the_partner_they_add(client, users, involve, database_pool, backend):
    from infra.databases import partner_database_unregister
    from tests.partners.test_admin import ADD_URL, form_data

    manager = User.objects.create_user("ia_manager", password="pw", is_staff=True)
    manager.groups.add(Group.objects.get(name="Account managers"))
    PartnerScope.objects.create(user=manager).partners.add(involve)
    client.force_login(manager)
    data = form_data([("conversion_id", "txn")], database_url=database_pool.url(backend, "acme_db"))
    try:
        added = client.post(ADD_URL, data, follow=True)
        assert added.status_code == 200 and "was added successfully" in added.content.decode()
        assert codes(partners_visible_to(fresh(manager))) == ["acme", "involve_asia"]
        assert codes(partners_visible_to(fresh(users["analyst"]))) == ["acme", "involve_asia"]  # unscoped: all
    finally:
        partner_database_unregister("acme_db")


def test_report_sources_of_other_partners_are_hidden_and_cannot_be_chosen(scoped, involve, rector, client):
    from django.contrib.auth.models import Permission

    from reconciliation.models import ReportSource

    scoped.user_permissions.add(*Permission.objects.filter(codename__in=["view_reportsource", "add_reportsource"]))
    client.force_login(scoped)
    ours = ReportSource.objects.create(partner=involve, name="IA report", kind="csv")
    other = ReportSource.objects.create(partner=rector, name="Rector report", kind="csv")
    listed = client.get("/admin/reconciliation/reportsource/").content.decode()
    assert "IA report" in listed and "Rector report" not in listed
    assert client.get(f"/admin/reconciliation/reportsource/{ours.pk}/change/").status_code == 200
    assert client.get(f"/admin/reconciliation/reportsource/{other.pk}/change/").status_code in (302, 404)
    assert client.get(f"/admin/reconciliation/reportsource/{other.pk}/reconcile/").status_code in (302, 404)
    added = client.get("/admin/reconciliation/reportsource/add/")
    choices = [str(label) for value, label in added.context["adminform"].form.fields["partner"].choices if value]
    assert choices == [str(involve)]
