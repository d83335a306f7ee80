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


_CATALOG = """
SELECT 'column', c.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod) || ' '
       || a.attnotnull || ' ' || a.attidentity::text || ' ' || coalesce(pg_get_expr(d.adbin, d.adrelid), '')
FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE c.relnamespace = %(schema)s::regnamespace AND c.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped
UNION ALL
SELECT 'constraint', conrelid::regclass::text || ' ' || conname || ' ' || pg_get_constraintdef(oid)
FROM pg_constraint WHERE connamespace = %(schema)s::regnamespace AND contype <> 'n'
UNION ALL
SELECT 'index', pg_get_indexdef(indexrelid) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
WHERE c.relnamespace = %(schema)s::regnamespace
UNION ALL
SELECT 'statistics', pg_get_statisticsobjdef(oid) FROM pg_statistic_ext WHERE stxnamespace = %(schema)s::regnamespace
UNION ALL
SELECT 'migration', app || '.' || name FROM django_migrations
"""


def _catalog(database: str, schema: str) -> list[tuple[str, str]]:
    with psycopg.connect(**{**POSTGRES_SERVER, "dbname": database}) as conn:
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        rows = conn.execute(_CATALOG, {"schema": schema}).fetchall()
    # Index and statistics definitions name their schema.
    return sorted((kind, text.replace(f"{schema}.", "<schema>.")) for kind, text in rows)


@POSTGRES_ONLY
def test_a_schema_made_from_the_prepared_definition_equals_a_migrated_one(involve, database_pool):
    """The prepared definition (read back from the template schema's catalog) makes the
    same tables, columns, constraints, indexes, statistics and migration records as
    running every migration does."""
    from django.db import connections as django_connections

    from infra.databases.provisioning import _migrate
    from infra.databases.registry import alias_register_copy, alias_unregister

    storage = _storage(involve)
    with psycopg.connect(**{**POSTGRES_SERVER, "dbname": storage["NAME"]}, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS migrated_here CASCADE; CREATE SCHEMA migrated_here")
    alias = alias_register_copy(
        django_connections.settings[involve.database_alias], name=storage["NAME"], schema="migrated_here"
    )
    try:
        _migrate(alias)
    finally:
        alias_unregister(alias)
    made, migrated = _catalog(storage["NAME"], storage["SCHEMA"]), _catalog(storage["NAME"], "migrated_here")
    assert [row for row in made if row[0] == "index"], "no index read"
    assert made == migrated


@POSTGRES_ONLY
def test_two_provisioners_publishing_the_schema_template_at_once_both_get_it(involve, database_pool):
    """Publishing the template schema is a rename; a rename racing another provisioner's
    loses on pg_namespace's unique index (not with "schema exists"), and the loser uses
    the winner's template instead of failing the partner it was provisioning."""
    import threading

    from infra.databases.schemas import _template_schema, template_schema_name

    version = "race" + database_pool.token
    template = template_schema_name(version)
    storage = _storage(involve)
    server = {**POSTGRES_SERVER, "dbname": storage["NAME"]}
    with psycopg.connect(**server) as winner, psycopg.connect(**server, autocommit=True) as conn:

        def migrate(alias):
            # The winner publishes its template while this provisioner is migrating,
            # and commits only once this provisioner's rename waits on it.
            winner.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(template)))
            threading.Timer(0.5, winner.commit).start()

        try:
            assert _template_schema(conn, storage, version=version, migrate=migrate) == template
            left = conn.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE %s", [template[:40] + "%"])
            assert [name for (name,) in left] == [template], "the loser's scratch schema was left behind"
        finally:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(template)))
