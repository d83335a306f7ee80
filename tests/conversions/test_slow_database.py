"""A slow or stuck partner database: bounded waits, 503 for that partner only."""

import time

import psycopg
import pytest
from django.conf import settings
from django.db import connections
from psycopg import sql

from infra.databases.config import database_settings
from partners.apps import _lift_timeouts, _restore_timeouts
from tests.conftest import POSTGRES_SERVER

OK = "/partner/involve/event?conversion_id={}&aff_sub=s"


@pytest.fixture
def backend():
    return "postgres"


def test_postgres_connections_carry_bounded_timeouts_by_default(involve):
    with connections[involve.database_alias].cursor() as cursor:
        cursor.execute("SHOW statement_timeout")
        assert cursor.fetchone() == ("5s",)
        cursor.execute("SHOW lock_timeout")
        assert cursor.fetchone() == ("2s",)


def test_a_locked_partner_table_is_a_503_and_other_partners_are_served(client, involve, rector, settings):
    settings.DB_BREAKER_SECONDS = 0.5
    storage = connections[involve.database_alias].settings_dict
    with psycopg.connect(**{**POSTGRES_SERVER, "dbname": storage["NAME"]}) as holder:
        table = sql.Identifier(storage["SCHEMA"] or "public", "partner_conversions")
        holder.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(table))
        started = time.monotonic()
        response = client.get(OK.format("locked-1"))
        waited = time.monotonic() - started
        assert response.status_code == 503
        assert response["Retry-After"] == "30"
        assert waited < 4.5  # the 2 s lock timeout, not the lock holder, decided
        # while the breaker is open the partner answers at once, without waiting again
        again = client.get(OK.format("locked-2"))
        assert again.status_code == 503
        assert client.get("/partner/rector/event?conversion_id=r-1").status_code == 200
        holder.rollback()
    time.sleep(0.6)
    assert client.get(OK.format("locked-3")).json()["status"] == "success"


@pytest.mark.direct_postgres
def test_migrations_lift_the_timeouts_and_restore_them(involve):
    alias = involve.database_alias

    def show() -> tuple[str, str]:
        with connections[alias].cursor() as cursor:
            cursor.execute("SELECT current_setting('statement_timeout'), current_setting('lock_timeout')")
            return cursor.fetchone()

    _lift_timeouts(using=alias)
    assert show() == ("0", "0")
    _restore_timeouts(using=alias)
    assert show() == ("5s", "2s")


def test_every_alias_uses_the_brokered_backends_and_gives_connections_back_each_request():
    postgres = database_settings("postgres://root@127.0.0.1:5432/x", base_dir=settings.BASE_DIR, connect_timeout=3)
    sqlite = database_settings("sqlite:///var/x.sqlite3", base_dir=settings.BASE_DIR)
    assert postgres["ENGINE"] == "infra.databases.backends.postgresql"
    assert sqlite["ENGINE"] == "infra.databases.backends.sqlite3"
    assert postgres["CONN_MAX_AGE"] == sqlite["CONN_MAX_AGE"] == 0
    assert postgres["OPTIONS"]["connect_timeout"] == 3 and "pool" not in postgres["OPTIONS"]
