"""Django's PostgreSQL backend, with connections lent by the process-wide broker."""

from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db.backends.postgresql import base
from psycopg import IsolationLevel, pq

from infra.databases.backends import connection_key
from infra.databases.broker import connection_broker
from infra.databases.requests import held_add, held_discard


class DatabaseWrapper(base.DatabaseWrapper):
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


def _answers(raw: Any) -> bool:
    try:
        raw.execute("")
    except Exception:  # any failure: the connection is not lent again
        return False
    return True
