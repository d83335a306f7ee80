"""The multi-database layer: aliases, the router and provisioning."""

from pathlib import Path

import psycopg
import pytest
from django.conf import settings
from django.db import connections

from conversions.models import PartnerConversion
from infra.databases import (
    PartnerDatabaseRequired,
    PartnerDatabaseUnavailable,
    partner_database_provision,
    partner_database_unregister,
)
from infra.databases.config import database_settings
from infra.masking import url_mask_password
from partners.models import Partner
from tests.conftest import POSTGRES_SERVER


def test_runtime_alias_is_a_complete_settings_entry(tmp_path):
    partner = Partner(database_name="runtime_db", database_url=f"sqlite:///{tmp_path}/runtime.sqlite3")
    alias = partner.database_alias
    try:
        config = connections[alias].settings_dict
        assert config["TIME_ZONE"] is None and "TEST" in config and config["CONN_HEALTH_CHECKS"] is True
        assert config["OPTIONS"]["transaction_mode"] == "IMMEDIATE"
        assert settings.DATABASES[alias] is config or settings.DATABASES[alias] == config
    finally:
        partner_database_unregister(alias)
    assert alias not in connections.settings


def test_partner_url_falls_back_to_the_template(settings):
    settings.PARTNER_DATABASE_URL = "postgres://app:pw@db.internal:5432/{name}"
    alias = Partner(database_name="tpl_db").database_alias
    try:
        config = connections.settings[alias]
        assert (config["NAME"], config["HOST"], config["USER"]) == ("tpl_db", "db.internal", "app")
    finally:
        partner_database_unregister(alias)


def test_sqlite_relative_paths_resolve_under_the_project():
    config = database_settings("sqlite:///var/x.sqlite3", base_dir=settings.BASE_DIR)
    assert config["NAME"] == str(settings.BASE_DIR / "var/x.sqlite3")


def test_password_is_masked_for_display():
    assert url_mask_password("postgres://app:s3cret@db:5432/x") == "postgres://app:****@db:5432/x"
    assert url_mask_password("sqlite:////tmp/x.sqlite3") == "sqlite:////tmp/x.sqlite3"


def test_conversion_query_without_an_alias_fails_loudly():
    with pytest.raises(PartnerDatabaseRequired, match="query it with .using"):
        PartnerConversion.objects.count()


def test_router_keeps_conversions_out_of_default(live_db):
    tables = connections["default"].introspection.table_names()
    assert "partners" in tables
    assert "partner_conversions" not in tables


def test_provision_creates_a_postgres_database_and_is_idempotent(live_db, database_pool):
    partner = Partner(database_name="fresh_db", database_url=database_pool.database_url("fresh_db"))
    first = partner_database_provision(partner=partner)
    second = partner_database_provision(partner=partner)
    try:
        migrations_dir = Path(__file__).resolve().parents[2] / "conversions" / "migrations"
        every_migration = sorted(f"conversions.{path.stem}" for path in migrations_dir.glob("[0-9]*.py"))
        # copied from this server's template of the current schema: nothing left to apply
        assert first.created and first.template.startswith(settings.PARTNER_DATABASE_TEMPLATE)
        assert first.migrations_applied == []
        assert not second.created and second.migrations_applied == []
        applied = connections[first.alias].cursor()
        applied.execute("SELECT app || '.' || name FROM django_migrations WHERE app = 'conversions' ORDER BY id")
        assert [name for (name,) in applied.fetchall()] == every_migration
        assert "partner_conversions" in connections[first.alias].introspection.table_names()
        with psycopg.connect(**POSTGRES_SERVER) as conn:
            name = connections.settings[first.alias]["NAME"]
            assert conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
    finally:
        partner_database_unregister(first.alias)


def test_provision_names_what_to_fix_when_the_server_is_unreachable(live_db):
    partner = Partner(database_name="nowhere_db", database_url="postgres://root@127.0.0.1:1/nowhere")
    try:
        with pytest.raises(PartnerDatabaseUnavailable, match="cannot reach PostgreSQL at 127.0.0.1:1"):
            partner_database_provision(partner=partner)
    finally:
        partner_database_unregister("nowhere_db")


def test_a_moved_partner_database_is_read_from_its_new_url_in_the_same_thread(live_db, tmp_path):
    import sqlite3

    for name, marker in (("old", 1), ("new", 2)):
        with sqlite3.connect(tmp_path / f"{name}.sqlite3") as db:
            db.execute("CREATE TABLE marker (value integer)")
            db.execute("INSERT INTO marker VALUES (?)", [marker])
    partner = Partner(database_name="moving_db", database_url=f"sqlite:///{tmp_path}/old.sqlite3")
    alias = partner.database_alias
    try:
        with connections[alias].cursor() as cursor:
            cursor.execute("SELECT value FROM marker")
            assert cursor.fetchone() == (1,)
        partner.database_url = f"sqlite:///{tmp_path}/new.sqlite3"
        assert partner.database_alias == alias
        with connections[alias].cursor() as cursor:
            cursor.execute("SELECT value FROM marker")
            assert cursor.fetchone() == (2,)
    finally:
        partner_database_unregister(alias)
