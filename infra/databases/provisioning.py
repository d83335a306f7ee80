"""Provisioning: a partner's database (or schema) created if missing, with the current schema.

A new partner database is copied from a template that already holds the current
schema: on PostgreSQL `CREATE DATABASE ... TEMPLATE`, on SQLite a file copied into
place. The template is made once per server (or directory) and schema version, by
running the migrations on a scratch database and publishing it under its final name
atomically, so concurrent provisioners never see half a template. Copying takes tens
of milliseconds where running the migrations takes about a second, so hundreds of
partners provision in seconds. Each database's applied migrations are then checked
against the migration graph (read from disk once per process) and any missing one is
applied, so an existing database is brought up to date the same way.

A partner that is a schema of a shared PostgreSQL database gets a role of its own
(NOLOGIN, granted to the login role so that it may SET ROLE to it) and its schema,
owned by that role; the schema's tables are created from a prepared definition
(schemas.py): what the migrations made in the database's template schema, read back
from the catalog, run in one round trip inside one transaction as the partner's role.
"""

import hashlib
import io
import logging
import os
import secrets
import shutil
import sys
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.db import DatabaseError, connections
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.recorder import MigrationRecorder

from infra.databases.breaker import PartnerDatabaseUnavailable
from infra.databases.config import POSTGRES_ENGINES, POSTGRES_NAME_LIMIT, SQLITE_ENGINES
from infra.databases.registry import (
    alias_ensure,
    alias_register_copy,
    alias_settings,
    alias_unregister,
    partner_database_url,
)
from infra.databases.router import partner_app_labels
from infra.databases.schemas import definitions_forget, schema_definition
from infra.errors import error_first_line
from infra.masking import url_mask_password
from infra.state import process_state_register

logger = logging.getLogger("partners.databases")


@dataclass(frozen=True)
class ProvisionResult:
    alias: str
    created: bool
    migrations_applied: list[str]
    location: str
    template: str = ""

    def describe_plainly(self) -> str:
        """What happened, in an account manager's words: no file path, URL or migration names."""
        if self.created:
            what = f"A new database, {self.alias}, was created for its conversions"
        elif self.migrations_applied:
            what = f"Its database {self.alias} already existed and was brought up to date"
        else:
            what = f"Its database {self.alias} already existed and is up to date"
        return f"{what}: it is ready to store this partner's conversions."

    def describe(self) -> str:
        if not self.created:
            parts = ["exists"]
        elif self.template == SCHEMA_DEFINITION:
            parts = [f"created from {SCHEMA_DEFINITION}"]
        elif self.template:
            parts = [f"created from template {self.template}"]
        else:
            parts = ["created"]
        if self.migrations_applied:
            parts.append(f"applied {len(self.migrations_applied)} migration(s): {', '.join(self.migrations_applied)}")
        else:
            parts.append("schema up to date")
        return f"{self.alias} ({self.location}): {'; '.join(parts)}"


def partner_database_provision(*, partner: Any) -> ProvisionResult:
    """Create the partner's database if missing and bring its schema up to date.

    Idempotent; leaves no connection open to it. Raises PartnerDatabaseUnavailable with
    a message that says what to fix.
    """
    alias = alias_ensure(partner)
    location = url_mask_password(partner_database_url(partner))
    try:
        created, template = _create_if_missing(alias, from_template=True)
        try:
            # A schema made from the prepared definition is current by construction.
            pending = [] if created and template == SCHEMA_DEFINITION else migrations_pending(alias)
            if pending:
                _migrate(alias)
        except DatabaseError as exc:
            raise PartnerDatabaseUnavailable(alias, f"cannot migrate {location}: {exc}".strip()) from exc
    finally:
        connections[alias].close()
    return ProvisionResult(
        alias=alias, created=created, migrations_applied=pending, location=location, template=template
    )


def partner_database_check(*, partner: Any) -> None:
    """Whether the partner's database can be provisioned, without changing anything: the
    server answers, and the database exists or may be created. Raises
    PartnerDatabaseUnavailable saying what to fix."""
    alias = partner.database_name  # not registered: a check changes nothing, in this process either
    config = alias_settings(partner_database_url(partner))
    if config["ENGINE"] in SQLITE_ENGINES:
        name = config["NAME"]
        if name and name != ":memory:" and not name.startswith("file:"):
            _sqlite_check(alias, Path(name))
        return
    if config["ENGINE"] in POSTGRES_ENGINES:
        _postgres_check(alias, config)


def _sqlite_check(alias: str, path: Path) -> None:
    if path.exists():
        if not os.access(path, os.R_OK | os.W_OK):
            raise PartnerDatabaseUnavailable(alias, f"cannot read and write {path}")
        return
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PartnerDatabaseUnavailable(alias, f"cannot create {path}: {folder} is not writable")


def _postgres_check(alias: str, config: dict[str, Any]) -> None:
    import psycopg

    try:
        with _postgres_server(config) as conn:
            if config.get("SCHEMA"):
                roles = (
                    conn.execute(
                        "SELECT rolcreaterole OR rolsuper OR pg_has_role(current_user, %s, %s) "
                        "FROM pg_roles WHERE rolname = current_user",
                        [config["ROLE"], _may_set_role(conn)],
                    ).fetchone()
                    if _role_exists(conn, config["ROLE"])
                    else conn.execute(
                        "SELECT rolcreaterole OR rolsuper FROM pg_roles WHERE rolname = current_user"
                    ).fetchone()
                )
                if not (roles and roles[0]):
                    raise PartnerDatabaseUnavailable(
                        alias,
                        f"user '{config['USER']}' may not create the partner's role '{config['ROLE']}' "
                        "(it needs CREATEROLE)",
                    )
            if _postgres_exists(conn, config["NAME"]):
                return
            may_create = conn.execute(
                "SELECT rolcreatedb OR rolsuper FROM pg_roles WHERE rolname = current_user"
            ).fetchone()
    except psycopg.OperationalError as exc:
        raise _unreachable(alias, config, exc) from exc
    except psycopg.Error as exc:
        raise PartnerDatabaseUnavailable(alias, f"cannot check database '{config['NAME']}': {exc}") from exc
    if not (may_create and may_create[0]):
        raise PartnerDatabaseUnavailable(
            alias, f"database '{config['NAME']}' does not exist and user '{config['USER']}' may not create databases"
        )


def database_create_if_missing(alias: str) -> bool:
    """Create the database behind `alias` (PostgreSQL, or a SQLite file's folder); True if created."""
    return _create_if_missing(alias, from_template=False)[0]


def migrations_pending(alias: str) -> list[str]:
    """The partner apps' migrations not yet applied on `alias`, in order."""
    graph = _migration_graph()
    applied = MigrationRecorder(connections[alias]).applied_migrations()
    pending: list[tuple[str, str]] = []
    labels = partner_app_labels()
    for target in sorted(key for key in graph.leaf_nodes() if key[0] in labels):
        for node in graph.forwards_plan(target):
            if node[0] in labels and node not in applied and node not in pending:
                pending.append(node)
    return [f"{app_label}.{name}" for app_label, name in pending]


@lru_cache(maxsize=1)
def _migration_graph():
    return MigrationLoader(None, ignore_no_migrations=True).graph


@lru_cache(maxsize=1)
def schema_version() -> str:
    """A short hash of the partner apps' migration files: the template's schema version."""
    digest = hashlib.sha256()
    graph = _migration_graph()
    for key in sorted(key for key in graph.nodes if key[0] in partner_app_labels()):
        module = sys.modules[graph.nodes[key].__module__]
        digest.update(f"{key}\n".encode())
        digest.update(Path(module.__file__).read_bytes())
    return digest.hexdigest()[:10]


def _migrate(alias: str) -> None:
    for app_label in sorted(partner_app_labels()):
        call_command("migrate", app_label, database=alias, interactive=False, verbosity=0, stdout=io.StringIO())


def _template_name() -> str:
    name = f"{settings.PARTNER_DATABASE_TEMPLATE}_{schema_version()}"
    return name[-POSTGRES_NAME_LIMIT:]


def _create_if_missing(alias: str, *, from_template: bool) -> tuple[bool, str]:
    config = connections.settings[alias]
    engine = config["ENGINE"]
    if engine in SQLITE_ENGINES:
        return _sqlite_create_if_missing(alias, config, from_template=from_template)
    if engine in POSTGRES_ENGINES:
        if config.get("SCHEMA"):
            _shared_database_ensure(alias, config)
            return _schema_create_if_missing(alias, config, prepared=from_template)
        with _create_database_lock:
            return _postgres_create_if_missing(alias, config, from_template=from_template)
    return False, ""


# --- SQLite ----------------------------------------------------------------------------


def _sqlite_create_if_missing(alias: str, config: dict[str, Any], *, from_template: bool) -> tuple[bool, str]:
    name = config["NAME"]
    if not name or name == ":memory:" or name.startswith("file:"):
        return False, ""
    path = Path(name)
    if path.exists():
        return False, ""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PartnerDatabaseUnavailable(alias, f"cannot create directory {path.parent}: {exc}") from exc
    if not from_template:
        return True, ""
    try:
        template = _sqlite_template(path.parent, config)
        scratch = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
        shutil.copyfile(template, scratch)
        try:
            os.link(scratch, path)  # never replaces a database another process just made
        except FileExistsError:
            return False, ""
        finally:
            scratch.unlink(missing_ok=True)
    except (OSError, DatabaseError) as exc:
        logger.warning("no SQLite template for %s (%s); its migrations will run instead", alias, exc)
        return True, ""
    return True, template.name


def _sqlite_template(directory: Path, config: dict[str, Any]) -> Path:
    template = directory / f"{_template_name()}.sqlite3"
    if template.exists():
        return template
    scratch = directory / f".{template.stem}.{secrets.token_hex(4)}.sqlite3"
    scratch_alias = alias_register_copy(config, name=str(scratch))
    try:
        _migrate(scratch_alias)
        connections[scratch_alias].close()
    finally:
        alias_unregister(scratch_alias)  # closes every connection: the file is complete
    try:
        os.link(scratch, template)
    except FileExistsError:
        pass  # another process published it first; both are the same schema
    finally:
        for leftover in (scratch, Path(f"{scratch}-wal"), Path(f"{scratch}-shm")):
            leftover.unlink(missing_ok=True)
    return template


# --- PostgreSQL: a schema of a shared database ------------------------------------------


SCHEMA_DEFINITION = "the prepared schema definition"
# Shared databases this process has seen exist: (host, port, name).
_shared_databases: set[tuple[str, str, str]] = set()
# One CREATE DATABASE at a time from this process: provisioning runs in parallel
# (init_partners), and PostgreSQL refuses to copy a template another copy is reading.
_create_database_lock = threading.Lock()


def _provisioning_caches_reset() -> None:
    _shared_databases.clear()
    definitions_forget()


process_state_register("infra.provisioning_caches", _provisioning_caches_reset)


def _shared_database_ensure(alias: str, config: dict[str, Any]) -> None:
    key = (config["HOST"], config["PORT"], config["NAME"])
    if key in _shared_databases:
        return
    with _create_database_lock:
        _postgres_create_if_missing(alias, config, from_template=False)
    _shared_databases.add(key)


def _schema_create_if_missing(alias: str, config: dict[str, Any], *, prepared: bool) -> tuple[bool, str]:
    """Create the partner's role and schema in the shared database; True if the schema is new."""
    import psycopg
    from psycopg import errors, sql

    schema, role = config["SCHEMA"], config["ROLE"]
    try:
        with _postgres_server(config, dbname=config["NAME"]) as conn:
            if _schema_exists(conn, schema):
                return False, ""
            definition = schema_definition(conn, config, version=schema_version(), migrate=_migrate) if prepared else ""
            role_ensure(conn, role)
            try:
                with conn.transaction():
                    conn.execute(
                        sql.SQL("CREATE SCHEMA {} AUTHORIZATION {}").format(
                            sql.Identifier(schema), sql.Identifier(role)
                        )
                    )
                    if definition:
                        conn.execute(
                            sql.SQL("SET LOCAL search_path TO {}; SET LOCAL ROLE {}; ").format(
                                sql.Identifier(schema), sql.Identifier(role)
                            )
                            + sql.SQL(definition),
                            prepare=False,
                        )
            except (errors.DuplicateSchema, errors.UniqueViolation):
                return False, ""  # another provisioner created it first
    except psycopg.OperationalError as exc:
        raise _unreachable(alias, config, exc) from exc
    except psycopg.Error as exc:
        raise PartnerDatabaseUnavailable(alias, f"cannot create schema '{schema}': {error_first_line(exc)}") from exc
    logger.info("created schema %s in database %s for alias %s", schema, config["NAME"], alias)
    return True, SCHEMA_DEFINITION if definition else ""


def role_ensure(conn, role: str) -> None:
    """Create the partner's role if missing, and let the login role SET ROLE to it."""
    from psycopg import errors, sql

    if not _role_exists(conn, role):
        try:
            with conn.transaction():
                conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(role)))
        except (errors.DuplicateObject, errors.UniqueViolation):
            pass  # created by a concurrent provisioner
    member = conn.execute("SELECT pg_has_role(current_user, %s, %s)", [role, _may_set_role(conn)]).fetchone()[0]
    if not member:
        conn.execute(sql.SQL("GRANT {} TO CURRENT_USER").format(sql.Identifier(role)))


def _may_set_role(conn) -> str:
    """pg_has_role's privilege for "may SET ROLE to it": from PostgreSQL 16 a role's
    creator holds it with ADMIN only (MEMBER is true) until granted SET."""
    return "SET" if conn.info.server_version >= 160000 else "MEMBER"


def _unreachable(alias: str, config: dict[str, Any], exc: Exception) -> PartnerDatabaseUnavailable:
    from psycopg import errors

    server = f"{config['HOST'] or 'localhost'}:{config['PORT'] or 5432}"
    if isinstance(exc, errors.QueryCanceled | errors.LockNotAvailable):
        # Reached, and too slow: a statement_timeout or lock_timeout (set on the role, or by a
        # pooler's connect_query) applies to provisioning's statements too.
        return PartnerDatabaseUnavailable(
            alias, f"PostgreSQL at {server} cancelled a provisioning statement: {error_first_line(exc)}; try again"
        )
    return PartnerDatabaseUnavailable(alias, f"cannot reach PostgreSQL at {server}: {exc}")


def _role_exists(conn, role: str) -> bool:
    return conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role]).fetchone() is not None


def _schema_exists(conn, schema: str) -> bool:
    return conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", [schema]).fetchone() is not None


# --- PostgreSQL ------------------------------------------------------------------------


def _postgres_create_if_missing(alias: str, config: dict[str, Any], *, from_template: bool) -> tuple[bool, str]:
    import psycopg
    from psycopg import errors, sql

    name = config["NAME"]
    try:
        with _postgres_server(config) as conn:
            if _postgres_exists(conn, name):
                return False, ""
            template = ""
            if from_template:
                try:
                    template = _postgres_template(conn, config)
                except (psycopg.Error, DatabaseError) as exc:
                    logger.warning("no PostgreSQL template for %s (%s); its migrations will run instead", alias, exc)
            try:
                statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
                if template:
                    statement += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
                    if conn.info.server_version >= 150000:
                        # A file copy of a small template is about 3x faster than
                        # WAL-logging every block of it, and writes no WAL for it.
                        statement += sql.SQL(" STRATEGY FILE_COPY")
                conn.execute(statement)
            except (errors.DuplicateDatabase, errors.UniqueViolation):
                # Another provisioner created it first (a concurrent CREATE DATABASE can
                # also lose on pg_database's unique index).
                return False, ""
    except psycopg.OperationalError as exc:
        raise _unreachable(alias, config, exc) from exc
    except psycopg.Error as exc:
        raise PartnerDatabaseUnavailable(alias, f"cannot create database '{name}': {exc}") from exc
    logger.info("created PostgreSQL database %s for alias %s%s", name, alias, f" from {template}" if template else "")
    return True, template


def _postgres_template(conn, config: dict[str, Any]) -> str:
    """The name of this server's template database for the current schema, made if missing."""
    from psycopg import errors, sql

    template = _template_name()
    if _postgres_exists(conn, template):
        return template
    scratch = f"{template[: POSTGRES_NAME_LIMIT - 9]}_{secrets.token_hex(4)}"
    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(scratch)))
    try:
        scratch_alias = alias_register_copy(config, name=scratch)
        try:
            _migrate(scratch_alias)
            connections[scratch_alias].close()
        finally:
            alias_unregister(scratch_alias)  # no session may stay on a template
        # Nobody connects to a template by mistake, so copying it never finds it in use;
        # a pooler in between may still keep a session on it: those go.
        conn.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(sql.Identifier(scratch)))
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            [scratch],
        )
        conn.execute(
            sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(scratch), sql.Identifier(template))
        )
    except (errors.DuplicateDatabase, errors.UniqueViolation):
        pass  # another provisioner published it first
    except BaseException:
        _postgres_drop_quietly(conn, scratch)
        raise
    else:
        return template
    _postgres_drop_quietly(conn, scratch)
    return template


def _postgres_exists(conn, name: str) -> bool:
    return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone() is not None


def _postgres_drop_quietly(conn, name: str) -> None:
    from psycopg import sql

    try:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    except Exception:  # best effort: a leftover scratch database is harmless
        logger.warning("could not drop scratch database %s", name, exc_info=True)


def _postgres_server(config: dict[str, Any], dbname: str = "postgres"):
    """An autocommit connection, as the login role, to the server's `postgres` database
    (for CREATE DATABASE) or to `dbname`."""
    import psycopg

    params = {
        "dbname": dbname,
        "user": config["USER"] or None,
        "password": config["PASSWORD"] or None,
        "host": config["HOST"] or None,
        "port": config["PORT"] or None,
        "connect_timeout": config["OPTIONS"].get("connect_timeout", 5),
    }
    # No server-side prepared statements: the server may be a PgBouncer in transaction mode.
    params = {key: value for key, value in params.items() if value is not None}
    return psycopg.connect(**params, autocommit=True, prepare_threshold=None)
