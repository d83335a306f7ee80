"""The multi-database layer: partner aliases, the router, provisioning.

Each partner's conversions live in the database named by `Partner.database_name`,
which is also its Django alias. Aliases are registered at runtime from Partner rows,
so a partner added after start-up works in every worker without a restart.
"""

import io
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.db import DEFAULT_DB_ALIAS, DatabaseError, OperationalError, connections
from django.db.migrations.executor import MigrationExecutor

from partners.dbconfig import POSTGRES_ENGINE, SQLITE_ENGINE, database_settings, url_mask_password

logger = logging.getLogger(__name__)

PARTNER_APP_LABELS = frozenset({"conversions"})

_registry_lock = threading.Lock()


class PartnerDatabaseRequired(LookupError):
    """A conversions query did not name its partner database."""


class PartnerDatabaseUnavailable(Exception):
    """A partner database cannot be reached or is not provisioned."""

    def __init__(self, alias: str, reason: str):
        super().__init__(f"database '{alias}': {reason}")
        self.alias = alias
        self.reason = reason


class DatabaseBreaker:
    """Per-process memory of partner databases that just failed to answer.

    After a connection failure or a timeout, the partner's postbacks answer 503 at once
    for DB_BREAKER_SECONDS instead of each waiting out the timeout again, so a stuck
    database cannot hold every worker thread while other partners wait.
    """

    def __init__(self) -> None:
        self._open_until: dict[tuple, tuple[float, str]] = {}

    @staticmethod
    def _key(alias: str) -> tuple:
        config = connections.settings.get(alias) or {}
        return (alias, config.get("HOST"), config.get("PORT"), config.get("NAME"))

    def check(self, alias: str) -> None:
        """Raise PartnerDatabaseUnavailable while `alias` is in its back-off window."""
        state = self._open_until.get(self._key(alias))
        if state is not None and time.monotonic() < state[0]:
            raise PartnerDatabaseUnavailable(alias, f"failing, not retried for a few seconds: {state[1]}")

    def record(self, alias: str, exc: DatabaseError) -> None:
        """Open the breaker for `alias` when `exc` says the database is unreachable or stuck."""
        seconds = settings.DB_BREAKER_SECONDS
        if seconds > 0 and isinstance(exc, OperationalError):
            reason = (str(exc).strip() or exc.__class__.__name__).splitlines()[0]
            self._open_until[self._key(alias)] = (time.monotonic() + seconds, reason)


database_breaker = DatabaseBreaker()


def partner_database_url(partner: Any) -> str:
    """The partner's own URL, else the PARTNER_DATABASE_URL template with {name} filled."""
    if partner.database_url:
        return partner.database_url
    return settings.PARTNER_DATABASE_URL.replace("{name}", partner.database_name)


def partner_database_register(partner: Any) -> str:
    """Make the partner's database usable as `connections[alias]`; return the alias."""
    alias = partner.database_alias
    if alias == DEFAULT_DB_ALIAS:
        raise ValueError("a partner cannot use the 'default' alias")
    config = database_settings(partner_database_url(partner), **settings.DATABASE_OPTIONS)
    if connections.settings.get(alias) == config:
        return alias
    with _registry_lock:
        current = connections.settings.get(alias)
        if current == config:
            return alias
        # Copy-on-write: other threads may be iterating connections.all() right now.
        databases = dict(connections.settings)
        databases[alias] = config
        connections.settings = databases
        settings.DATABASES = databases
    if current is not None and hasattr(connections._connections, alias):
        # The URL changed: drop this thread's connection object (it keeps its old
        # settings), so the next use builds one for the new URL.
        connections[alias].close()
        delattr(connections._connections, alias)
    if current is not None:
        logger.info("partner database %s now points at %s", alias, url_mask_password(partner_database_url(partner)))
    return alias


def partner_database_unregister(alias: str) -> None:
    """Forget a registered partner alias (closing this thread's connection)."""
    if alias == DEFAULT_DB_ALIAS or alias not in connections.settings:
        return
    connections[alias].close()
    with _registry_lock:
        databases = {key: value for key, value in connections.settings.items() if key != alias}
        connections.settings = databases
        settings.DATABASES = databases
        if hasattr(connections._connections, alias):
            delattr(connections._connections, alias)


class PartnerDatabaseRouter:
    """`default` holds configuration; the conversions app lives in partner databases.

    Queries name their alias with `.using(alias)`; Django gives routers no hint on plain
    reads, so a conversions query without an alias fails loudly instead of touching
    `default`.
    """

    def _partner_db(self, model, **hints) -> str | None:
        if model._meta.app_label not in PARTNER_APP_LABELS:
            return None
        instance = hints.get("instance")
        if instance is not None and instance._state.db:
            return instance._state.db
        raise PartnerDatabaseRequired(
            f"{model.__name__} lives in a partner database: query it with .using(partner.database_alias)"
        )

    db_for_read = _partner_db
    db_for_write = _partner_db

    def allow_migrate(self, db: str, app_label: str, model_name: str | None = None, **hints) -> bool:
        if app_label in PARTNER_APP_LABELS:
            return db != DEFAULT_DB_ALIAS
        return db == DEFAULT_DB_ALIAS


@dataclass(frozen=True)
class ProvisionResult:
    alias: str
    created: bool
    migrations_applied: list[str]
    location: str

    def describe(self) -> str:
        parts = ["created" if self.created else "exists"]
        if self.migrations_applied:
            parts.append(f"applied {len(self.migrations_applied)} migration(s): {', '.join(self.migrations_applied)}")
        else:
            parts.append("schema up to date")
        return f"{self.alias} ({self.location}): {'; '.join(parts)}"


def partner_database_provision(*, partner: Any) -> ProvisionResult:
    """Create the partner's database if missing and migrate the conversions schema.

    Idempotent. Raises PartnerDatabaseUnavailable with a message that says what to fix.
    """
    alias = partner_database_register(partner)
    location = url_mask_password(partner_database_url(partner))
    created = database_create_if_missing(alias)
    try:
        connection = connections[alias]
        executor = MigrationExecutor(connection)
        targets = [key for key in executor.loader.graph.leaf_nodes() if key[0] in PARTNER_APP_LABELS]
        plan = executor.migration_plan(targets)
        pending = [f"{migration.app_label}.{migration.name}" for migration, _backwards in plan]
        if pending:
            for app_label in sorted(PARTNER_APP_LABELS):
                call_command("migrate", app_label, database=alias, interactive=False, verbosity=0, stdout=io.StringIO())
    except DatabaseError as exc:
        raise PartnerDatabaseUnavailable(alias, f"cannot migrate {location}: {exc}".strip()) from exc
    return ProvisionResult(alias=alias, created=created, migrations_applied=pending, location=location)


def database_create_if_missing(alias: str) -> bool:
    """Create the database behind `alias` (PostgreSQL, or a SQLite file's folder); True if created."""
    config = connections.settings[alias]
    engine = config["ENGINE"]
    if engine == SQLITE_ENGINE:
        name = config["NAME"]
        if not name or name == ":memory:" or name.startswith("file:"):
            return False
        path = Path(name)
        existed = path.exists()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PartnerDatabaseUnavailable(alias, f"cannot create directory {path.parent}: {exc}") from exc
        return not existed
    if engine == POSTGRES_ENGINE:
        return _postgres_database_create_if_missing(alias, config)
    return False


def _postgres_database_create_if_missing(alias: str, config: dict[str, Any]) -> bool:
    import psycopg
    from psycopg import errors, sql

    params = {
        "dbname": "postgres",
        "user": config["USER"] or None,
        "password": config["PASSWORD"] or None,
        "host": config["HOST"] or None,
        "port": config["PORT"] or None,
        "connect_timeout": config["OPTIONS"].get("connect_timeout", 5),
    }
    name = config["NAME"]
    try:
        with psycopg.connect(**{k: v for k, v in params.items() if v is not None}, autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
            if exists:
                return False
            try:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            except errors.DuplicateDatabase:
                return False
    except psycopg.OperationalError as exc:
        raise PartnerDatabaseUnavailable(
            alias, f"cannot reach PostgreSQL at {config['HOST'] or 'localhost'}:{config['PORT'] or 5432}: {exc}"
        ) from exc
    except psycopg.Error as exc:
        raise PartnerDatabaseUnavailable(alias, f"cannot create database '{name}': {exc}") from exc
    logger.info("created PostgreSQL database %s for alias %s", name, alias)
    return True


def database_ping(alias: str, query: str = "SELECT 1") -> str | None:
    """None when `alias` answers `query`, else the reason it does not."""
    try:
        with connections[alias].cursor() as cursor:
            cursor.execute(query)
            cursor.fetchone()
    except Exception as exc:  # any driver failure means "unreachable" to a health check
        connections[alias].close()
        return str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
    return None
