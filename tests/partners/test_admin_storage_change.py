"""Changing where a partner's conversions are stored, in the partner admin (test client).

A partner that holds conversions keeps its database: pointing it elsewhere would leave
them behind, out of its lists and out of its duplicate check. `move_partner` moves them.
"""

import re
from collections.abc import Iterator
from html import unescape

import psycopg
import pytest
from django.db import connections
from psycopg import sql

from infra.databases import partner_database_unregister
from infra.databases.registry import alias_ensure
from partners.models import Partner
from tests.conftest import POSTGRES_SERVER, partner_rows

LIST_URL = "/admin/conversions/partnerconversion/"
MOVED = "involve_moved_db"


@pytest.fixture
def root_client(client, users):
    client.force_login(users["root"])
    return client


@pytest.fixture
def template_storage(settings, database_pool, backend) -> None:
    """Partners without a URL of their own: a schema each of one shared PostgreSQL database,
    or a SQLite file each; their location follows their database name."""
    settings.PARTNER_DATABASE_URL = (
        database_pool.shared_url() if backend == "postgres" else database_pool.template(backend)
    )


@pytest.fixture
def moved_alias() -> Iterator[str]:
    """The database a test moves a partner to, emptied and forgotten afterwards."""
    yield MOVED
    if MOVED in connections.settings:
        with connections[MOVED].cursor() as cursor:
            cursor.execute("DELETE FROM partner_conversions")
        partner_database_unregister(MOVED)


def change_data(partner: Partner, **fields: str) -> dict[str, str]:
    """The partner's change form as the admin shows it, with `fields` typed over it."""
    data = {
        "partner_code": partner.partner_code,
        "partner_name": partner.partner_name,
        "is_active": "on",
        "endpoint_path": partner.endpoint_path,
        "timezone": partner.timezone,
        "enable_logging": "on",
        "database_name": partner.database_name,
        "database_url": partner.database_url,
        "max_daily_requests": str(partner.max_daily_requests),
        "data_retention_days": str(partner.data_retention_days),
        "cloud_run_service_name": "",
        "cloud_run_region": "asia-southeast1",
        "cloud_run_project_id": "",
        "endpoint_url": "",
        "parameter_mapping-TOTAL": str(len(partner.parameter_mapping) + 1),
        "status_mapping-TOTAL": "1",
        "status_transitions-TOTAL": "1",
    }
    for index, (field, param) in enumerate(partner.parameter_mapping.items()):
        data[f"parameter_mapping-{index}-field"] = field
        data[f"parameter_mapping-{index}-param"] = param
    data.update(fields)
    return data


def change(client, partner: Partner, **fields: str):
    return client.post(f"/admin/partners/partner/{partner.pk}/change/", change_data(partner, **fields))


def page_text(response) -> str:
    return re.sub(r"\s+", " ", unescape(re.sub(r"<[^>]+>", " ", response.content.decode())))


def field_error(response, field: str) -> str:
    """The error shown beside one field of the form."""
    html = response.content.decode()
    match = re.search(rf'<ul class="errorlist"[^>]*id="id_{field}_error">(.*?)</ul>', html, re.S)
    assert match, f"no error beside {field}: {page_text(response)[:2000]}"
    return page_text_of(match.group(1))


def page_text_of(html: str) -> str:
    return re.sub(r"\s+", " ", unescape(re.sub(r"<[^>]+>", " ", html))).strip()


def listed_ids(client, partner: Partner) -> list[str]:
    html = client.get(f"{LIST_URL}?partner={partner.partner_code}").content.decode()
    return re.findall(r'<th class="field-conversion_id"><a href="[^"]*">([^<]*)</a>', html)


def postback(client, conversion_id: str) -> str:
    return client.get(f"/partner/involve/event?conversion_id={conversion_id}").json()["status"]


def test_renaming_a_partner_that_holds_conversions_is_refused(root_client, template_storage, make_partner):
    involve = make_partner("involve_asia", database_url="")
    assert [postback(root_client, "c1"), postback(root_client, "c2")] == ["success", "success"]

    response = change(root_client, involve, database_name=MOVED)

    assert response.status_code == 200  # the form again, nothing saved
    error = field_error(response, "database_name")
    assert "This partner's current database, involve_asia_db, holds 2 conversions." in error
    assert "would leave them behind" in error
    assert "would be stored again as new originals instead of duplicates" in error
    assert "python manage.py move_partner involve_asia --to-url URL" in error
    assert "A new database" not in page_text(response)
    involve.refresh_from_db()
    assert involve.database_name == "involve_asia_db" and involve.database_url == ""
    assert MOVED not in connections.settings  # never provisioned
    assert sorted(listed_ids(root_client, involve)) == ["c1", "c2"]
    assert postback(root_client, "c1") == "duplicate"


def test_a_partner_without_conversions_can_be_renamed(root_client, template_storage, make_partner, moved_alias):
    involve = make_partner("involve_asia", database_url="")

    response = change(root_client, involve, database_name=MOVED)

    assert response.status_code == 302, page_text(response)
    involve.refresh_from_db()
    assert involve.database_name == MOVED
    assert postback(root_client, "c1") == "success"
    assert [row.conversion_id for row in partner_rows(involve)] == ["c1"]


def test_changing_the_database_url_is_refused_while_it_holds_conversions(
    root_client, make_partner, database_pool, backend, moved_alias
):
    involve = make_partner("involve_asia")
    elsewhere = database_pool.url(backend, MOVED)
    assert postback(root_client, "c1") == "success"

    refused = change(root_client, involve, database_url=elsewhere)

    assert refused.status_code == 200
    error = field_error(refused, "database_url")
    assert "involve_asia_db, holds 1 conversion." in error
    assert "python manage.py move_partner involve_asia --to-url URL" in error
    involve.refresh_from_db()
    assert involve.database_url == database_pool.url(backend, "involve_asia_db")
    assert postback(root_client, "c1") == "duplicate"

    partner_rows(involve).delete()  # nothing left behind: it may go
    moved = change(root_client, involve, database_url=elsewhere, database_name=MOVED)
    assert moved.status_code == 302, page_text(moved)
    involve.refresh_from_db()
    assert involve.database_url == elsewhere
    assert postback(root_client, "c1") == "success"


def test_an_edit_that_keeps_the_location_is_allowed(root_client, make_partner, database_pool, backend, moved_alias):
    # The URL names the database: a new name (the alias) leaves the conversions where they are.
    involve = make_partner("involve_asia")
    assert postback(root_client, "c1") == "success"

    response = change(root_client, involve, database_name=MOVED)

    assert response.status_code == 302, page_text(response)
    involve.refresh_from_db()
    assert involve.database_name == MOVED
    assert listed_ids(root_client, involve) == ["c1"]
    assert postback(root_client, "c1") == "duplicate"
    if backend == "postgres":
        # A new password (trust auth ignores it) reaches the same tables.
        with_password = involve.database_url.replace("root@", "root:new-pw-1@")
        assert change(root_client, involve, database_url=with_password).status_code == 302
        involve.refresh_from_db()
        assert involve.database_url == with_password


@pytest.mark.parametrize(
    ("backend", "unreachable"),
    [
        ("postgres", "postgres://root:s3cret-pw@127.0.0.1:1/gone_db"),
        ("sqlite", "sqlite:////nonexistent-dir/gone_db.sqlite3"),
    ],
)
def test_a_current_database_that_cannot_be_read_refuses_the_change(
    root_client, make_partner, database_pool, backend, unreachable
):
    involve = make_partner("involve_asia")
    reachable = involve.database_url
    Partner.objects.filter(pk=involve.pk).update(database_url=unreachable)
    try:
        stored = Partner.objects.get(pk=involve.pk)
        response = change(root_client, stored, database_url=database_pool.url(backend, MOVED))

        assert response.status_code == 200
        error = field_error(response, "database_url")
        assert "The conversions in this partner's current database, involve_asia_db, could not be counted:" in error
        assert "Save again once it answers" in error
        assert "python manage.py move_partner involve_asia --to-url URL" in error
        assert "s3cret-pw" not in response.content.decode()
        stored.refresh_from_db()
        assert stored.database_url == unreachable
    finally:
        Partner.objects.filter(pk=involve.pk).update(database_url=reachable)
        alias_ensure(Partner.objects.get(pk=involve.pk))  # back where the fixture empties it


def test_a_current_database_never_provisioned_holds_nothing_and_may_change(
    root_client, make_partner, database_pool, backend
):
    # It answers, without a conversions table: e.g. its provisioning failed after the save.
    involve = make_partner("involve_asia")
    if backend == "postgres":
        empty = database_pool.database_url("never_provisioned")
        with psycopg.connect(**POSTGRES_SERVER, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(empty.rsplit("/", 1)[1])))
    else:
        empty = database_pool.url(backend, "never_provisioned")
    Partner.objects.filter(pk=involve.pk).update(database_url=empty)
    stored = Partner.objects.get(pk=involve.pk)

    response = change(root_client, stored, database_url=database_pool.url(backend, MOVED))

    assert response.status_code == 302, page_text(response)
    stored.refresh_from_db()
    assert stored.database_url == database_pool.url(backend, MOVED)
    assert postback(root_client, "c1") == "success"  # the fixture empties it: the alias points there now
