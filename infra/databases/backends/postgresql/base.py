"""Django's PostgreSQL backend, with connections lent by the process-wide broker.

Partners that are schemas of one database share that database's connections: the
connection key names the server, database and user, not the partner. A connection lent
for a partner is switched to the partner's schema and role (SCHEMA and ROLE in the
alias's settings) before its first statement, so each partner's statements find only its
own tables and run with only its own role's rights:

- connected directly, the session is switched when it is lent to another partner (one
  round trip; none when it serves the same partner again). Prepared statements stay
  correct: PostgreSQL re-parses a prepared statement when search_path changed since its
  last use.
- through a pooler in transaction mode (TRANSACTION_POOLER), a session may be another
  client's by the next statement, so nothing is set on it: every transaction starts with
  a transaction-local switch (`set_config(..., true)`), and a statement outside a
  transaction runs in one of its own. The pooler's sessions never carry a partner's
  schema or role.
"""

import weakref
from typing import Any

import psycopg
from django.core.exceptions import ImproperlyConfigured
from django.db.backends.postgresql import base
from psycopg import IsolationLevel, pq, sql

from infra.databases.backends import connection_key
from infra.databases.broker import connection_broker
from infra.databases.requests import held_add, held_discard

NO_SCHEMA = ("", "")
# The (schema, role) each directly connected session is switched to.
_session_target: "weakref.WeakKeyDictionary[psycopg.Connection, tuple[str, str]]" = weakref.WeakKeyDictionary()
# Behind a transaction pooler: the (schema, role) each transaction of the connection starts with.
_transaction_target: "weakref.WeakKeyDictionary[psycopg.Connection, tuple[str, str]]" = weakref.WeakKeyDictionary()

_LOCAL_SWITCH = "SELECT set_config('search_path', %s, true), set_config('role', %s, true)"


def _search_path(schema: str) -> str:
    return sql.Identifier(schema).as_string(None)


class _TransactionSwitch:
    """A psycopg cursor whose statements run in their partner's schema and role behind a
    transaction pooler (see the module doc)."""

    def execute(self, query, params=None, **kwargs):
        conn = self.connection
        target = _transaction_target.get(conn)
        if target is None or conn.info.transaction_status != pq.TransactionStatus.IDLE:
            # No partner schema, or inside a transaction that started switched.
            return super().execute(query, params, **kwargs)
        if conn.autocommit:
            with conn.transaction():
                _switch_local(conn, target)
                return super().execute(query, params, **kwargs)
        _switch_local(conn, target)  # opens the transaction
        return super().execute(query, params, **kwargs)

    def executemany(self, query, params_seq, **kwargs):
        conn = self.connection
        target = _transaction_target.get(conn)
        if target is None or conn.info.transaction_status != pq.TransactionStatus.IDLE:
            return super().executemany(query, params_seq, **kwargs)
        if conn.autocommit:
            with conn.transaction():
                _switch_local(conn, target)
                return super().executemany(query, params_seq, **kwargs)
        _switch_local(conn, target)
        return super().executemany(query, params_seq, **kwargs)


def _switch_local(conn: psycopg.Connection, target: tuple[str, str]) -> None:
    schema, role = target
    # set_config('role', 'none') is RESET ROLE.
    psycopg.Cursor(conn).execute(_LOCAL_SWITCH, [_search_path(schema), role or "none"], prepare=False)


class SwitchingCursor(_TransactionSwitch, base.Cursor):
    """Django's cursor (client-side binding)."""


class SwitchingServerBindingCursor(_TransactionSwitch, psycopg.Cursor):
    """A server-side binding cursor (for prepared statements)."""


def binding_cursor(raw: psycopg.Connection) -> psycopg.Cursor:
    """A server-side binding cursor on a lent connection, switched like Django's."""
    return SwitchingServerBindingCursor(raw)


class DatabaseWrapper(base.DatabaseWrapper):
    def get_connection_params(self) -> dict[str, Any]:
        params = super().get_connection_params()
        if params.get("cursor_factory") is base.Cursor:
            params["cursor_factory"] = SwitchingCursor
        return params

    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        # Django sets the isolation level on the wrapper when it connects; a lent
        # connection already has it, the wrapper still needs to know it.
        try:
            self.isolation_level = IsolationLevel(
                self.settings_dict["OPTIONS"].get("isolation_level", IsolationLevel.READ_COMMITTED)
            )
        except ValueError as exc:
            raise ImproperlyConfigured(f"Invalid transaction isolation level: {exc}") from exc
        raw = connection_broker.acquire(
            key=connection_key("postgresql", conn_params),
            alias=self.alias,
            connect=lambda: super(DatabaseWrapper, self).get_new_connection(conn_params),
            check=_answers,
        )
        held_add(self)
        return raw

    def init_connection_state(self) -> None:
        super().init_connection_state()
        storage_switch(self.connection, self.settings_dict)

    def _close(self) -> None:
        raw = self.connection
        if raw is None:
            return
        reusable = (
            not raw.closed
            and not raw.broken
            and raw.autocommit
            and raw.info.transaction_status == pq.TransactionStatus.IDLE
        )
        held_discard(self)
        with self.wrap_database_errors:
            connection_broker.release(raw, reusable=reusable)


def storage_switch(raw: psycopg.Connection, settings_dict: dict[str, Any]) -> None:
    """Point a lent connection at the alias's schema and role (see the module doc)."""
    target = (settings_dict.get("SCHEMA", ""), settings_dict.get("ROLE", ""))
    if settings_dict.get("TRANSACTION_POOLER"):
        if target == NO_SCHEMA:
            _transaction_target.pop(raw, None)
        else:
            _transaction_target[raw] = target
        return
    if _session_target.get(raw, NO_SCHEMA) == target:
        return
    schema, role = target
    statement = (
        sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)) if schema else sql.SQL("RESET search_path")
    )
    statement += sql.SQL("; SET ROLE {}").format(sql.Identifier(role)) if role else sql.SQL("; RESET ROLE")
    # Both in one round trip (simple protocol: no parameters); the two succeed or fail together.
    psycopg.Cursor(raw).execute(statement, prepare=False)
    _session_target[raw] = target


def _answers(raw: Any) -> bool:
    try:
        raw.execute("")
    except Exception:  # any failure: the connection is not lent again
        return False
    return True
