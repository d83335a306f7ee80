"""Partners as schemas of one shared PostgreSQL database: shared connections, each
partner's statements in its own schema and role, isolation enforced by PostgreSQL.

Run directly and (make test's second pass) through PgBouncer in transaction mode.
"""

import psycopg
import pytest
from django.db import DatabaseError, connections
from django.test import Client, override_settings
from psycopg import sql

from tests.conftest import POSTGRES_SERVER, partner_rows, run_concurrently

POSTGRES_ONLY = pytest.mark.parametrize("backend", ["postgres"], indirect=True)


def _storage(partner) -> dict:
    return connections[partner.database_alias].settings_dict


def _stored_ids(partner) -> set[str]:
    """The conversion ids in the partner's schema, read as the login role with a qualified name."""
    storage = _storage(partner)
    table = sql.Identifier(storage["SCHEMA"], "partner_conversions")
    with psycopg.connect(**{**POSTGRES_SERVER, "dbname": storage["NAME"]}) as conn:
        return {row[0] for row in conn.execute(sql.SQL("SELECT conversion_id FROM {}").format(table))}


@POSTGRES_ONLY
def test_partners_share_one_database_each_in_its_own_schema_and_role(involve, rector):
    a, b = _storage(involve), _storage(rector)
    assert a["NAME"] == b["NAME"]
    assert (a["SCHEMA"], b["SCHEMA"]) == (involve.database_name, rector.database_name)
    assert a["ROLE"] != b["ROLE"]
    with connections[involve.database_alias].cursor() as cursor:
        cursor.execute("SELECT current_schema(), current_user")
        assert cursor.fetchone() == (a["SCHEMA"], a["ROLE"])
    connections[involve.database_alias].close()


@POSTGRES_ONLY
def test_writing_another_partners_table_is_refused_by_postgresql(involve, rector):
    """Serving rector, a statement that names involve's table gets a permission error."""
    other = sql.Identifier(_storage(involve)["SCHEMA"], "partner_conversions").as_string(None)
    connection = connections[rector.database_alias]
    with pytest.raises(DatabaseError, match="permission denied"), connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {other} (partner_id, conversion_id, raw_data, is_duplicate, received_at, "  # noqa: S608
            "created_at, updated_at) VALUES (%s, 'forged', '{}', false, now(), now(), now())",
            [involve.pk],
        )
    with pytest.raises(DatabaseError, match="permission denied"), connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM {other}")  # noqa: S608
    connection.close()
    assert "forged" not in _stored_ids(involve)


def test_default_holds_no_partner_table(live_db):
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_tables WHERE tablename = 'partner_conversions'")
        assert cursor.fetchone()[0] == 0


@POSTGRES_ONLY
def test_interleaved_partners_on_shared_connections_store_every_row_in_its_own_schema(involve, rector):
    """Threads alternate the two partners' postbacks on connections they share; with
    prepared statements (when on) the plans of one never reach the other's table."""
    partners = [involve, rector]
    count = 40

    def post(index: int) -> int:
        partner = partners[index % 2]
        code = partner.partner_code
        client = Client()
        statuses = []
        for repeat in range(8):  # past the prepare threshold on every connection
            path = f"{partner.endpoint_path}?conversion_id={code}-{index}-{repeat}"
            statuses.append(client.get(f"/partner{path}").status_code)
        return max(statuses)

    with override_settings(DB_MAX_CONNECTIONS=4):
        results = run_concurrently(post, count)
    assert results == [200] * count
    for which, partner in enumerate(partners):
        expected = {f"{partner.partner_code}-{i}-{r}" for i in range(which, count, 2) for r in range(8)}
        assert _stored_ids(partner) == expected
        assert {row.partner_id for row in partner_rows(partner)} == {partner.pk}


@POSTGRES_ONLY
def test_one_connection_serves_both_partners_with_prepared_statements(involve, rector):
    """One connection for the whole process (`default` included), switched back and forth:
    each INSERT lands in the partner's schema."""
    client = Client()
    with override_settings(DB_MAX_CONNECTIONS=1):
        for round_ in range(7):
            for partner in (involve, rector):
                path = f"{partner.endpoint_path}?conversion_id=one-{round_}"
                assert client.get(f"/partner{path}").json()["status"] == "success"
        # Stored before: a duplicate in its own schema only.
        assert client.get(f"/partner{involve.endpoint_path}?conversion_id=one-0").json()["status"] == "duplicate"
    assert _stored_ids(involve) == {f"one-{r}" for r in range(7)} | {"one-0"}
    assert _stored_ids(rector) == {f"one-{r}" for r in range(7)}


@POSTGRES_ONLY
def test_other_clients_of_the_server_see_no_partners_schema_or_role(involve, rector, partner_server_port):
    """Through PgBouncer in transaction mode (the second pass) the sessions our statements
    ran on are handed to other clients: they must carry neither schema nor role."""
    client = Client()
    for round_ in range(5):
        for partner in (involve, rector):
            assert client.get(f"/partner{partner.endpoint_path}?conversion_id=pool-{round_}").status_code == 200
    # A client of the pooler that never switches sees the login role's defaults on every session.
    storage = _storage(involve)
    params = {**POSTGRES_SERVER, "port": partner_server_port, "dbname": storage["NAME"]}
    with psycopg.connect(**params, autocommit=True) as conn:
        for _ in range(10):
            schema, user = conn.execute("SELECT current_schema(), current_user").fetchone()
            assert user == "root" and schema in (None, "public")
