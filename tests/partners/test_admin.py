"""The partner admin, as account managers and analysts use it (Django test client)."""

import re
from html import unescape

import pytest
from django.contrib.admin.models import ADDITION, LogEntry
from django.contrib.auth.models import Group
from django.db import connections
from django.test import Client

from infra.databases import partner_database_unregister
from partners.models import Partner
from partners.services import admin_groups_ensure
from tests.conftest import partner_rows

ADD_URL = "/admin/partners/partner/add/"


def form_data(mapping_rows=(), **fields):
    data = {
        "partner_code": "acme",
        "partner_name": "Acme Ads",
        "is_active": "on",
        "endpoint_path": "/acme/event",
        "timezone": "UTC",
        "enable_logging": "on",
        "database_name": "acme_db",
        "database_url": "",
        "max_daily_requests": "100000",
        "data_retention_days": "30",
        "cloud_run_service_name": "",
        "cloud_run_region": "asia-southeast1",
        "cloud_run_project_id": "",
        "endpoint_url": "",
        "parameter_mapping-TOTAL": "11",
    }
    for index, (field, param) in enumerate(mapping_rows):
        data[f"parameter_mapping-{index}-field"] = field
        data[f"parameter_mapping-{index}-param"] = param
    data.update(fields)
    return data


def status_rows(name: str, rows) -> dict[str, str]:
    keys = ("value", "status") if name == "status_mapping" else ("from", "to")
    data = {f"{name}-TOTAL": str(len(rows) + 1)}
    for index, row in enumerate(rows):
        data.update({f"{name}-{index}-{key}": cell for key, cell in zip(keys, row, strict=True)})
    return data


def page_text(response) -> str:
    return re.sub(r"\s+", " ", unescape(re.sub(r"<[^>]+>", " ", response.content.decode())))


def test_groups_exist_with_their_permissions(live_db):
    admin_groups_ensure()
    admin_groups_ensure()  # idempotent
    perms = {
        group.name: sorted(group.permissions.values_list("codename", flat=True))
        for group in Group.objects.filter(name__in=["Account managers", "Analysts"])
    }
    assert perms == {
        "Account managers": [
            "add_healthsettings",
            "add_partner",
            "add_publisher",
            "add_publisherofferpayout",
            "add_reportsource",
            "change_healthsettings",
            "change_partner",
            "change_publisher",
            "change_publisherofferpayout",
            "change_reportsource",
            "delete_publisherofferpayout",
            "view_healthsettings",
            "view_incident",
            "view_partner",
            "view_partnerconversion",
            "view_publisher",
            "view_publisherofferpayout",
            "view_reportsource",
        ],
        "Analysts": ["view_incident", "view_partner", "view_partnerconversion", "view_publisher", "view_reportsource"],
    }


def test_partner_list_shows_endpoint_database_and_todays_postbacks(manager_client, involve, rector):
    for index in range(3):
        manager_client.get(f"/partner/involve/event?conversion_id=c{index}")
    response = manager_client.get("/admin/partners/partner/")
    assert response.status_code == 200
    html = response.content.decode()
    assert re.search(r'<td class="field-postbacks_today">3</td>', html)
    assert re.search(r'<td class="field-postbacks_today">0</td>', html)
    for text in ("involve_asia", "/involve/event", "involve_asia_db", "rector_db"):
        assert text in html
    searched = manager_client.get("/admin/partners/partner/?q=rector")
    assert "rector_db" in searched.content.decode() and "involve_asia_db" not in searched.content.decode()


@pytest.fixture
def acme_alias():
    yield "acme_db"
    partner_database_unregister("acme_db")


def test_adding_a_partner_with_a_mapping_table_provisions_its_database(
    manager_client, database_pool, backend, acme_alias
):
    url = database_pool.url(backend, "acme_db")
    rows = [("sub_id", "aff_sub"), ("conversion_id", "txn"), ("usd_earning", "payout")]
    response = manager_client.post(ADD_URL, form_data(rows, database_url=url), follow=True)

    assert response.status_code == 200, page_text(response)
    partner = Partner.objects.get(partner_code="acme")
    assert partner.parameter_mapping == {"sub_id": "aff_sub", "conversion_id": "txn", "usd_earning": "payout"}
    assert "A new database, acme_db, was created for its conversions: it is ready to store" in page_text(response)
    assert "sqlite" not in page_text(response) and "0001_initial" not in page_text(response)
    with connections["acme_db"].cursor() as cursor:
        cursor.execute("SELECT count(*) FROM partner_conversions")
        assert cursor.fetchone() == (0,)
    # ... and it receives postbacks at once
    assert manager_client.get("/partner/acme/event?txn=T1&aff_sub=S1&payout=1.5").json()["status"] == "success"
    assert partner_rows(partner).get().sub_id == "S1"
    entry = LogEntry.objects.get(object_id=str(partner.pk))
    assert entry.action_flag == ADDITION and entry.user.username == "manager"


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([("sub_id", "aff_sub"), ("bogus", "x")], "Row 2: 'bogus' is not one of our fields."),
        ([("sub_id", "")], "Row 1 (sub_id): enter the partner's parameter name."),
        (
            [("sub_id", "aff_sub"), ("click_id", "aff_sub")],
            "Row 2 (click_id): parameter 'aff_sub' is already used in row 1.",
        ),
        ([("sub_id", "a"), ("sub_id", "b")], "Row 2: 'sub_id' is already mapped in row 1."),
        ([("", "aff_sub")], "Row 1: choose which of our fields 'aff_sub' fills."),
    ],
)
def test_mapping_errors_name_the_row_and_nothing_is_saved(manager_client, rows, message):
    response = manager_client.post(ADD_URL, form_data(rows))
    assert response.status_code == 200
    assert message in page_text(response)
    assert not Partner.objects.filter(partner_code="acme").exists()
    # the rows come back as typed, so the manager fixes one row rather than retyping
    if rows[0][1]:
        assert f'value="{rows[0][1]}"' in response.content.decode()


def test_unreachable_database_is_a_form_error_saying_what_to_fix(manager_client):
    url = "postgres://root:s3cret-pw@127.0.0.1:1/acme_db"
    response = manager_client.post(ADD_URL, form_data(database_url=url))
    text = page_text(response)
    assert response.status_code == 200
    assert "Cannot prepare the partner's database: cannot reach PostgreSQL at 127.0.0.1:1" in text
    assert "Check the database URL" in text
    assert "s3cret-pw" not in response.content.decode()
    assert not Partner.objects.filter(partner_code="acme").exists()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://a@b/c", "Use a PostgreSQL URL (postgres://user:password@host:5432/database_name)"),
        ("nonsense", "Use a PostgreSQL URL"),
        ("postgres://root@127.0.0.1:5432/", "Name the database at the end of the URL"),
        ("postgres://root:****@127.0.0.1:5432/x", "Type the password again: it is never shown."),
    ],
)
def test_database_url_must_be_a_usable_postgres_or_sqlite_url(manager_client, url, message):
    response = manager_client.post(ADD_URL, form_data(database_url=url))
    assert response.status_code == 200
    assert message in page_text(response)
    assert not Partner.objects.filter(partner_code="acme").exists()


def test_database_password_is_masked_and_kept_when_unchanged(manager_client, make_partner, database_pool, backend):
    partner = make_partner("rector")
    if backend == "postgres":
        # trust auth ignores the password, so a real one can be stored and kept
        with_password = partner.database_url.replace("root@", "root:top-secret-1@")
        Partner.objects.filter(pk=partner.pk).update(database_url=with_password)
    else:
        with_password = partner.database_url
    page = manager_client.get(f"/admin/partners/partner/{partner.pk}/change/")
    assert "top-secret-1" not in page.content.decode()
    shown = re.search(r'name="database_url" value="([^"]*)"', page.content.decode()).group(1)
    data = form_data(
        [("sub_id", "sub_id")],
        partner_code="rector",
        partner_name="Rector renamed",
        endpoint_path="/rector/event",
        database_name="rector_db",
        database_url=unescape(shown),
    )
    response = manager_client.post(f"/admin/partners/partner/{partner.pk}/change/", data, follow=True)
    assert response.status_code == 200, page_text(response)
    partner.refresh_from_db()
    assert partner.partner_name == "Rector renamed"
    assert partner.database_url == with_password


def test_postback_url_panel_uses_the_mapping_macros(manager_client, involve):
    response = manager_client.get(f"/admin/partners/partner/{involve.pk}/change/")
    url = re.search(r'<code id="postback-url">([^<]+)</code>', response.content.decode()).group(1)
    assert unescape(url) == (
        "http://testserver/partner/involve/event?conversion_id={conversion_id}&offer_id={offer_id}"
        "&offer_name={offer_name}&conversion_datetime={datetime_conversion}&usd_sale_amount={usd_sale_amount}"
        "&usd_earning={usd_payout}&media_id={aff_sub2}&sub_id={aff_sub}&click_id={aff_sub3}"
        "&status={conversion_status}&currency={conversion_currency}&sale_amount_local={sale_amount_local}"
        "&payout_local={payout_local}"
    )


def test_postback_url_uses_public_base_url(manager_client, rector, settings):
    settings.PUBLIC_BASE_URL = "https://postback.example.com/"
    response = manager_client.get(f"/admin/partners/partner/{rector.pk}/change/")
    assert "https://postback.example.com/partner/rector/event?conversion_id={conversion_id}&amp;" in (
        response.content.decode()
    )


def test_test_postback_shows_fields_ignored_and_errors_storing_nothing(manager_client, involve):
    url = f"/admin/partners/partner/{involve.pk}/test-postback/"
    payload = "conversion_id=IA-9&aff_sub=s1&usd_payout=abc&datetime_conversion=2025-01-15 13:45:10&extra=1"
    response = manager_client.post(url, {"payload": payload})
    html = response.content.decode()
    text = page_text(response)
    assert "Would be stored as invalid (HTTP 400)" in text
    assert "usd_earning (from usd_payout): 'abc' is not a number" in text
    assert "usd_payout: usd_payout" not in text and "usd_earning: usd_earning" not in text
    row = re.search(r'<tr data-field="sub_id">(.*?)</tr>', html, re.S).group(1)
    assert "aff_sub" in row and "s1" in row
    row = re.search(r'<tr data-field="conversion_datetime">(.*?)</tr>', html, re.S).group(1)
    assert "2025-01-15 13:45:10+00:00" in row
    assert re.search(r'id="dry-run-ignored">extra ', html)
    assert partner_rows(involve).count() == 0

    full_url = "https://x.example/partner/involve/event?conversion_id=IA-10&usd_payout=1.255"
    ok = page_text(manager_client.post(url, {"payload": full_url}))
    assert "Would be recorded (HTTP 200)" in ok and "1.26" in ok
    as_json = page_text(manager_client.post(url, {"payload": '{"conversion_id": "J1", "aff_sub2": 7}'}))
    assert "Would be recorded (HTTP 200)" in as_json
    manager_client.get("/partner/involve/event?conversion_id=IA-10&usd_payout=1.255&conversion_status=pending")
    again = page_text(manager_client.post(url, {"payload": full_url}))
    assert "Would be a duplicate (HTTP 200): this conversion_id is already recorded" in again
    approved = page_text(
        manager_client.post(url, {"payload": full_url + "&conversion_status=approved&usd_sale_amount=9"})
    )
    assert "Would update the recorded conversion (HTTP 200, updated): status pending → approved" in approved
    assert "usd_sale_amount None → 9.00" in approved
    involve.status_mapping = {"1": "rejected"}
    involve.save()
    stale = page_text(manager_client.post(url, {"payload": full_url + "&conversion_status=bogus"}))
    assert (
        "status (from conversion_status): 'bogus' is not a known status (known: 1, approved, paid, pending, rejected)"
        in stale
    )
    assert partner_rows(involve).count() == 1
    broken = page_text(manager_client.post(url, {"payload": '{"conversion_id": '}))
    assert "body: is not valid JSON" in broken
    assert partner_rows(involve).count() == 1


def test_deleting_a_partner_confirms_and_keeps_its_database(manager_client, involve, users):
    for index in range(2):
        manager_client.get(f"/partner/involve/event?conversion_id=d{index}")
    users["manager"].user_permissions.add(*Group.objects.get(name="Account managers").permissions.all())
    from django.contrib.auth.models import Permission

    users["manager"].user_permissions.add(Permission.objects.get(codename="delete_partner"))
    url = f"/admin/partners/partner/{involve.pk}/delete/"
    confirm = page_text(manager_client.get(url))
    assert "involve_asia_db holds 2 conversion(s)" in confirm
    assert "its database and conversions are kept" in confirm
    response = manager_client.post(url, {"post": "yes"}, follow=True)
    assert response.status_code == 200
    assert not Partner.objects.filter(pk=involve.pk).exists()
    assert partner_rows(involve).count() == 2
    assert manager_client.get("/partner/involve/event?conversion_id=after").status_code == 404


def test_analyst_can_view_but_not_change_or_add_partners(analyst_client, involve):
    page = analyst_client.get(f"/admin/partners/partner/{involve.pk}/change/")
    assert page.status_code == 200
    assert 'name="partner_name"' not in page.content.decode()  # read-only view
    denied = analyst_client.post(
        f"/admin/partners/partner/{involve.pk}/change/", form_data(partner_code="involve_asia", partner_name="X")
    )
    assert denied.status_code == 403
    assert analyst_client.get(ADD_URL).status_code == 403
    involve.refresh_from_db()
    assert involve.partner_name == "InvolveAsia"


def test_status_mapping_and_transitions_are_edited_and_validated(manager_client, involve):
    url = f"/admin/partners/partner/{involve.pk}/change/"
    bad = manager_client.post(
        url,
        form_data(
            [("conversion_id", "conversion_id")],
            partner_code="involve_asia",
            endpoint_path="/involve/event",
            database_name="involve_asia_db",
            database_url=involve.database_url,
            **status_rows("status_mapping", [("1", "won"), ("", ""), ("Cancelled", "rejected")]),
            **status_rows("status_transitions", [("rejected", "approved")]),
        ),
    )
    assert bad.status_code == 200
    assert "Row 1 (1): choose one of our statuses." in page_text(bad)
    # only the faulty row is marked, the good and the blank ones are not
    marked = re.findall(r'<tr class="rows-row( row-error)?" data-row="(\d+)"', bad.content.decode())
    status_table = bad.content.decode().split('id="id_status_mapping"')[1].split("</table>")[0]
    assert re.findall(r'<tr class="rows-row row-error" data-row="(\d+)"', status_table) == ["1"]
    assert len(marked) > 3
    good = manager_client.post(
        url,
        form_data(
            [("conversion_id", "conversion_id"), ("status", "state")],
            partner_code="involve_asia",
            endpoint_path="/involve/event",
            database_name="involve_asia_db",
            database_url=involve.database_url,
            **status_rows("status_mapping", [("2", "pending"), ("1", "approved")]),
            **status_rows("status_transitions", [("rejected", "approved"), ("", "")]),
        ),
        follow=True,
    )
    assert good.status_code == 200, page_text(good)
    involve.refresh_from_db()
    assert involve.status_mapping == {"1": "approved", "2": "pending"}
    page = manager_client.get(url).content.decode()
    assert 'name="status_mapping-0-value" value="2"' in page and 'name="status_mapping-1-value" value="1"' in page
    assert '<option value="rejected" selected>' in page.split('name="status_transitions-0-from"')[1]
    assert involve.status_transitions == [["rejected", "approved"]]
    assert manager_client.get("/partner/involve/event?conversion_id=S1&state=2").json()["status"] == "success"
    assert manager_client.get("/partner/involve/event?conversion_id=S1&state=1").json()["status"] == "updated"


def test_secret_is_rotated_shown_once_and_never_in_the_form(manager_client, users, involve):
    change = manager_client.get(f"/admin/partners/partner/{involve.pk}/change/")
    assert "Not set: anyone with the URL can post" in page_text(change)
    secret_url = f"/admin/partners/partner/{involve.pk}/secret/"
    analyst = Client()
    analyst.force_login(users["analyst"])
    assert analyst.get(secret_url).status_code == 403
    assert analyst.post(secret_url, {"action": "rotate"}).status_code == 403

    rotated = manager_client.post(secret_url, {"action": "rotate"})
    secret = re.search(r'<code id="new-secret"[^>]*>([^<]+)</code>', rotated.content.decode()).group(1)
    assert "no-store" in rotated["Cache-Control"]
    involve.refresh_from_db()
    assert involve.postback_secret == secret
    change = manager_client.get(f"/admin/partners/partner/{involve.pk}/change/").content.decode()
    assert secret not in change and "Set (never shown again)" in change
    assert "This partner has a postback secret" in change
    assert manager_client.get("/partner/involve/event?conversion_id=K1").status_code == 403
    assert manager_client.get(f"/partner/involve/event?conversion_id=K1&token={secret}").status_code == 200
    assert LogEntry.objects.filter(object_id=str(involve.pk), change_message="Generated the postback secret.").exists()

    manager_client.post(secret_url, {"action": "remove"})
    involve.refresh_from_db()
    assert involve.postback_secret == ""


def test_refused_postbacks_are_shown_on_the_partner_page(manager_client, involve):
    manager_client.get("/partner/involve/event?usd_payout=1")  # 400: no conversion_id
    page = page_text(manager_client.get(f"/admin/partners/partner/{involve.pk}/change/"))
    assert "1 × invalid_data (400)" in page


def test_mapping_error_marks_only_its_row_and_rows_keep_their_order(manager_client, database_pool, backend, acme_alias):
    rows = [("sub_id", "aff_sub"), ("", ""), ("bogus", "x"), ("conversion_id", "txn")]
    bad = manager_client.post(ADD_URL, form_data(rows))
    table = bad.content.decode().split('id="id_parameter_mapping"')[1].split("</table>")[0]
    assert re.findall(r'<tr class="rows-row row-error" data-row="(\d+)"', table) == ["3"]
    assert "Row 3: &#x27;bogus&#x27; is not one of our fields." in table  # beside the row at fault

    url = database_pool.url(backend, "acme_db")
    typed = [("usd_earning", "payout"), ("sub_id", "aff_sub"), ("conversion_id", "txn")]
    saved = manager_client.post(ADD_URL, form_data(typed, database_url=url), follow=True)
    assert saved.status_code == 200
    partner = Partner.objects.get(partner_code="acme")
    page = manager_client.get(f"/admin/partners/partner/{partner.pk}/change/").content.decode()
    shown = re.findall(r'name="parameter_mapping-\d+-param" value="([^"]+)"', page)
    assert shown == ["payout", "aff_sub", "txn"]  # as typed, not in our fields' order


def test_test_postback_warns_of_unfilled_macros_and_keeps_its_help_below_the_box(manager_client, involve):
    url = f"/admin/partners/partner/{involve.pk}/test-postback/"
    template = (
        "https://x.example/partner/involve/event?conversion_id={conversion_id}&aff_sub=%7Baff_sub%7D&usd_payout=1"
    )
    response = manager_client.post(url, {"payload": template})
    warning = re.search(r'<ul class="messagelist" id="dry-run-macros">(.*?)</ul>', response.content.decode(), re.S)
    assert warning, "no warning for a URL template"
    assert "conversion_id={conversion_id}" in unescape(warning.group(1)) and "aff_sub={aff_sub}" in unescape(
        warning.group(1)
    )
    filled = manager_client.post(url, {"payload": "conversion_id=IA-1&aff_sub=s1"}).content.decode()
    assert 'id="dry-run-macros"' not in filled
    # the help text is its own paragraph under the box, not a span floating beside it
    assert re.search(r"</textarea>\s*<p class=\"help\" id=\"test-postback-help\">", filled)
