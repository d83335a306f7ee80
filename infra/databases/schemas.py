"""A partner schema's definition: the current tables, indexes and constraints as one script.

New schemas in a shared database are not migrated one by one: replaying the migration
history costs every ALTER it ever made (a column type change rewrites a table). Instead
the partner apps' migrations run once per shared database and schema version, into a
template schema (`PARTNER_DATABASE_TEMPLATE` + version, published under that name when
complete, like the template database of the database-per-partner form), and the
definition of what they produced is read back from PostgreSQL's catalog: each table
with its columns, defaults, identity and constraints, then its indexes and extended
statistics (those RunPython steps made included) under their own names, then the
foreign keys, then the rows of `django_migrations`. The script is read once per process
and version and runs in one round trip, in one transaction, as the partner's role.
"""

import logging
import secrets
from typing import Any

from django.conf import settings

from infra.databases.config import POSTGRES_NAME_LIMIT

logger = logging.getLogger("partners.databases")

# (host, port, database, schema version) -> the definition script.
_definitions: dict[tuple[Any, ...], str] = {}


def template_schema_name(version: str) -> str:
    return f"{settings.PARTNER_DATABASE_TEMPLATE}_{version}"[-POSTGRES_NAME_LIMIT:]


def schema_definition(conn, config: dict[str, Any], *, version: str, migrate: Any) -> str:
    """The script that creates the current partner tables in an empty schema (on the
    search_path). `conn` is an autocommit psycopg connection to the shared database as the
    login role; `migrate(alias)` runs the partner apps' migrations on a Django alias."""
    key = (config["HOST"], config["PORT"], config["NAME"], version)
    if key not in _definitions:
        template = _template_schema(conn, config, version=version, migrate=migrate)
        _definitions[key] = _catalog_definition(conn, template)
    return _definitions[key]


def definitions_forget() -> None:
    _definitions.clear()


def _template_schema(conn, config: dict[str, Any], *, version: str, migrate: Any) -> str:
    """The shared database's template schema for `version`, made if missing."""
    from psycopg import errors, sql

    from infra.databases.registry import alias_register_copy, alias_unregister

    template = template_schema_name(version)
    if conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", [template]).fetchone():
        return template
    scratch = f"{template[: POSTGRES_NAME_LIMIT - 9]}_{secrets.token_hex(4)}"
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(scratch)))
    try:
        scratch_alias = alias_register_copy(config, name=config["NAME"], schema=scratch)
        try:
            migrate(scratch_alias)
        finally:
            alias_unregister(scratch_alias)
        conn.execute(sql.SQL("ALTER SCHEMA {} RENAME TO {}").format(sql.Identifier(scratch), sql.Identifier(template)))
    except (errors.DuplicateSchema, errors.UniqueViolation):
        # another provisioner published it first: the same schema version (a rename racing
        # another can also lose on pg_namespace's unique index)
        pass
    except BaseException:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(scratch)))
        raise
    else:
        logger.info("made the partner schema template %s in database %s", template, config["NAME"])
        return template
    conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(scratch)))
    return template


_TABLES = """
SELECT c.oid, c.relname FROM pg_class c
WHERE c.relnamespace = %s::regnamespace AND c.relkind = 'r' ORDER BY c.oid
"""
_COLUMNS = """
SELECT quote_ident(a.attname), format_type(a.atttypid, a.atttypmod), a.attnotnull, a.attidentity,
       pg_get_expr(d.adbin, d.adrelid),
       CASE WHEN a.attcollation <> t.typcollation THEN quote_ident(co.collname) END
FROM pg_attribute a
JOIN pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
LEFT JOIN pg_collation co ON co.oid = a.attcollation
WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum
"""
_CONSTRAINTS = """
SELECT quote_ident(conname), pg_get_constraintdef(oid), contype FROM pg_constraint
WHERE conrelid = %s ORDER BY contype = 'f', oid
"""
_INDEXES = """
SELECT pg_get_indexdef(i.indexrelid) FROM pg_index i
WHERE i.indrelid = %s AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)
ORDER BY i.indexrelid
"""
_STATISTICS = "SELECT pg_get_statisticsobjdef(oid) FROM pg_statistic_ext WHERE stxrelid = %s ORDER BY oid"


def _catalog_definition(conn, template: str) -> str:
    """The template schema's tables as DDL with unqualified names (read with the template
    alone on the search_path, PostgreSQL prints most names without their schema)."""
    from psycopg import sql

    statements: list[str] = []
    foreign_keys: list[str] = []
    with conn.transaction():
        conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(template)))
        for oid, name in conn.execute(_TABLES, [template]).fetchall():
            table = sql.Identifier(name).as_string(conn)
            parts = []
            for column, type_, not_null, identity, default, collation in conn.execute(_COLUMNS, [oid]).fetchall():
                part = f"{column} {type_}"
                if collation:
                    part += f" COLLATE {collation}"
                if identity:
                    part += " GENERATED ALWAYS AS IDENTITY" if identity == "a" else " GENERATED BY DEFAULT AS IDENTITY"
                elif default is not None:
                    part += f" DEFAULT {default}"
                if not_null:
                    part += " NOT NULL"
                parts.append(part)
            for constraint, definition, kind in conn.execute(_CONSTRAINTS, [oid]).fetchall():
                if kind == "f":
                    foreign_keys.append(f"ALTER TABLE {table} ADD CONSTRAINT {constraint} {definition}")
                elif kind != "n":
                    parts.append(f"CONSTRAINT {constraint} {definition}")
            statements.append(f"CREATE TABLE {table} ({', '.join(parts)})")
            statements += [row[0] for row in conn.execute(_INDEXES, [oid]).fetchall()]
            statements += [row[0] for row in conn.execute(_STATISTICS, [oid]).fetchall()]
        statements += foreign_keys
        rows = conn.execute(
            "SELECT format('(%L, %L, %L)', app, name, applied) FROM django_migrations ORDER BY id"
        ).fetchall()
        if rows:
            values = ", ".join(row[0] for row in rows)
            statements.append(f"INSERT INTO django_migrations (app, name, applied) VALUES {values}")  # noqa: S608
    # pg_get_indexdef and pg_get_statisticsobjdef name the schema whatever the search_path.
    qualified = (f"{sql.Identifier(template).as_string(conn)}.", f"{template}.")
    script = ";\n".join(statements)
    for prefix in qualified:
        script = script.replace(f"ON {prefix}", "ON ").replace(f"STATISTICS {prefix}", "STATISTICS ")
    if template in script:
        raise ValueError(f"the definition read from {template} still names it: {script}")
    return script
