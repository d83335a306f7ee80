"""`/health` and `/info`. (The first boot, before and after init_partners, runs against
a fresh database in tests/e2e/test_image.py.)"""

import psycopg
from django.db import connections
from psycopg import sql

import postback_site.views
from infra.databases import partner_database_unregister
from partners.services import partner_create
from tests.conftest import POSTGRES_SERVER


def test_health_is_200_when_every_database_answers(client, involve, rector):
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "databases": {"default": "ok", "involve_asia_db": "ok", "rector_db": "ok"},
    }


def test_health_is_503_naming_the_failing_database(client, involve, backend):
    partner_create(
        partner_code="down",
        partner_name="Down",
        endpoint_path="/down/event",
        database_name="down_db",
        database_url="postgres://root@127.0.0.1:1/x" if backend == "postgres" else "sqlite:////nonexistent/d/x.sqlite3",
    )
    response = client.get("/health")
    assert response.status_code == 503
    body = response.json()
    assert body["failing"] == ["down_db"]
    assert body["databases"]["involve_asia_db"] == "ok"
    assert body["message"] == "Unreachable or not provisioned: down_db"


def test_health_serves_only_configured_partners(client, involve, rector, settings):
    settings.POSTBACK_PARTNERS = ["rector"]
    assert client.get("/health").json()["databases"] == {"default": "ok", "rector_db": "ok"}
    assert client.get("/partner/involve/event?conversion_id=x").status_code == 404
    assert client.get("/partner/rector/event?conversion_id=x").status_code == 200


def test_info_lists_partners_without_secrets(client, make_partner, tmp_path):
    make_partner("involve_asia", database_url=f"sqlite:///{tmp_path}/never-shown-s3cret.sqlite3")
    body = client.get("/info").json()
    assert body["version"]
    assert body["partners"] == [
        {
            "code": "involve_asia",
            "name": "InvolveAsia",
            "endpoint": "/involve/event",
            "postback_url": "http://testserver/partner/involve/event",
            "database": "involve_asia_db",
            "timezone": "UTC",
        }
    ]
    assert "s3cret" not in client.get("/info").content.decode()


def test_health_names_a_partner_database_that_exists_but_is_not_provisioned(client, involve, database_pool, backend):
    url = database_pool.url(backend, "empty_db")
    if backend == "postgres":
        with psycopg.connect(**POSTGRES_SERVER, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(url.rsplit("/", 1)[1])))
    partner_create(
        partner_code="fresh",
        partner_name="Fresh",
        endpoint_path="/fresh/event",
        database_name="fresh_db",
        database_url=url,
    )
    try:
        response = client.get("/health")
        assert response.status_code == 503
        body = response.json()
        assert body["databases"]["fresh_db"] == "not provisioned: run `python manage.py init_partners`"
        assert body["databases"]["involve_asia_db"] == "ok"
        assert body["failing"] == ["fresh_db"]
    finally:
        partner_database_unregister("fresh_db")


def test_health_names_migrations_still_to_apply_on_the_configuration_database(client, involve):
    postback_site.views._migrated.clear()
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT id, app, name, applied FROM django_migrations WHERE app = 'partners' ORDER BY name DESC")
        latest = cursor.fetchone()
        cursor.execute("DELETE FROM django_migrations WHERE id = %s", [latest[0]])
    try:
        response = client.get("/health")
        assert response.status_code == 503
        assert response["Retry-After"]
        body = response.json()
        assert body["failing"] == ["default"]
        expected = f"1 unapplied migration(s) (partners.{latest[2]}): run `python manage.py init_partners`"
        assert body["databases"] == {"default": expected}
        assert body["message"] == f"configuration database {expected}"
    finally:
        with connections["default"].cursor() as cursor:
            cursor.execute("INSERT INTO django_migrations (id, app, name, applied) VALUES (%s, %s, %s, %s)", latest)
    assert client.get("/health").status_code == 200
