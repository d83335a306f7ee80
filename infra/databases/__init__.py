"""The multi-database layer: the one way into a partner's database.

Each partner's conversions live in the database named by `Partner.database_name`,
which is also its Django alias. `Partner.database_alias` registers the alias when it is
first needed (registry.py); work that must fail fast when the database is sick goes
through `partner_database(partner)`, which adds the bulkhead and breaker (breaker.py)
and turns database failures into PartnerDatabaseUnavailable. Every connection of the
process, to any database, comes from one bounded broker (broker.py, used by the
backends in backends/). Provisioning creates and migrates a partner database
(provisioning.py); the router keeps the conversions app out of `default`.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.db import DEFAULT_DB_ALIAS, DatabaseError, InterfaceError, OperationalError, ProgrammingError, connections

from infra.databases.backends.postgresql.base import binding_cursor
from infra.databases.breaker import (
    ConfigurationUnavailable,
    PartnerDatabaseUnavailable,
    database_guard,
)
from infra.databases.broker import ConnectionsExhausted, connection_broker
from infra.databases.provisioning import (
    ProvisionResult,
    database_create_if_missing,
    migrations_pending,
    partner_database_check,
    partner_database_provision,
)
from infra.databases.registry import alias_ensure, alias_unregister, partner_database_url
from infra.databases.router import (
    PartnerDatabaseRequired,
    PartnerDatabaseRouter,
    partner_app_labels,
    partner_models_register,
)
from infra.databases.shared import shared_database_alias, shared_database_cursor, shared_database_key
from infra.errors import error_first_line

__all__ = [
    "ConnectionsExhausted",
    "PartnerDatabaseRequired",
    "PartnerDatabaseRouter",
    "ConfigurationUnavailable",
    "PartnerDatabaseUnavailable",
    "ProvisionResult",
    "binding_cursor",
    "connection_broker",
    "database_create_if_missing",
    "database_ping",
    "error_first_line",
    "configuration_read",
    "partner_database",
    "INIT_COMMAND",
    "NOT_INITIALISED",
    "NOT_PROVISIONED",
    "migrations_to_apply",
    "partner_database_state",
    "partner_database_check",
    "partner_database_provision",
    "partner_database_unregister",
    "partner_database_url",
    "partner_app_labels",
    "partner_models_register",
    "shared_database_alias",
    "shared_database_cursor",
    "shared_database_key",
]


@contextmanager
def partner_database(partner: Any) -> Iterator[str]:
    """Work on the partner's database: yields its alias.

    Refused at once (PartnerDatabaseUnavailable) while the database's breaker is open
    or its share of this process's threads is taken; any database error inside the
    block is re-raised as PartnerDatabaseUnavailable, and one that says the database
    did not answer opens the breaker. The thread's connection goes back to the broker
    when the block ends (unless a transaction is still open), so code that visits many
    partners' databases in turn holds one connection at a time.
    """
    alias = alias_ensure(partner)
    guard = database_guard(alias)
    ticket = guard.admit(alias)
    failure = None
    concluded = True
    try:
        yield alias
    except ConfigurationUnavailable:
        concluded = False  # `default` failed: this database was not the one tried
        raise
    except ConnectionsExhausted as exc:
        # The process ran out of connections: not this database's fault.
        raise PartnerDatabaseUnavailable(alias, str(exc)) from exc
    except (OperationalError, InterfaceError) as exc:
        failure = error_first_line(exc)
        raise PartnerDatabaseUnavailable(alias, failure) from exc
    except DatabaseError as exc:
        # It answered, with an error (e.g. not provisioned): retrying later may work.
        raise PartnerDatabaseUnavailable(alias, error_first_line(exc)) from exc
    finally:
        guard.release(ticket, failure=failure, concluded=concluded)
        connection = connections[alias]
        if not connection.in_atomic_block:
            connection.close()


@contextmanager
def configuration_read() -> Iterator[None]:
    """Read the configuration (`default`) and give its connection back at once (unless a
    transaction on it is open): a thread then never holds `default` while it waits for a
    partner's connection, nor a partner's while it waits for `default` held that way. With
    few connections per database (DB_POOL_MAX_SIZE) two postbacks could otherwise each hold
    what the other waits for, until DB_CONNECT_TIMEOUT turned one into a 503."""
    try:
        yield
    finally:
        connection = connections[DEFAULT_DB_ALIAS]
        if not connection.in_atomic_block:
            connection.close()


def partner_database_unregister(alias: str) -> None:
    """Forget a registered partner alias (closing its connections)."""
    alias_unregister(alias)


INIT_COMMAND = "python manage.py init_partners"
NOT_INITIALISED = f"not initialised: run `{INIT_COMMAND}`"
NOT_PROVISIONED = f"not provisioned: run `{INIT_COMMAND}`"


def migrations_to_apply(unapplied: list[str]) -> str:
    """What a health check says of a database with migrations still to apply."""
    shown = ", ".join(unapplied[:3]) + (", ..." if len(unapplied) > 3 else "")
    return f"{len(unapplied)} unapplied migration(s) ({shown}): run `{INIT_COMMAND}`"


def partner_database_state(partner: Any) -> str:
    """'ok', or what keeps the partner's database from storing postbacks: unreachable,
    not provisioned, or migrations to apply (without waiting on one whose breaker is open)."""
    try:
        with partner_database(partner) as alias:
            connection = connections[alias]
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
            try:
                with connection.cursor() as cursor:
                    cursor.execute("SELECT 1 FROM partner_conversions LIMIT 1")
            except DatabaseError as exc:
                # It answered SELECT 1: a missing table (SQLite says so with an OperationalError).
                if isinstance(exc, ProgrammingError) or connection.vendor == "sqlite":
                    return NOT_PROVISIONED
                raise
            unapplied = migrations_pending(alias)
    except PartnerDatabaseUnavailable as exc:
        return exc.reason
    return migrations_to_apply(unapplied) if unapplied else "ok"


def database_ping(alias: str, query: str = "SELECT 1") -> str | None:
    """None when `alias` answers `query`, else the reason it does not."""
    try:
        with connections[alias].cursor() as cursor:
            cursor.execute(query)
            cursor.fetchone()
    except Exception as exc:  # any driver failure means "unreachable" to a health check
        connections[alias].close()
        return error_first_line(exc)
    return None
