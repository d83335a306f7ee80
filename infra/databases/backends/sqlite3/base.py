"""Django's SQLite backend, with connections lent by the process-wide broker.

An in-memory database lives and dies with its connection, so it is never shared.
"""

from typing import Any

from django.db.backends.sqlite3 import base

from infra.databases.backends import connection_key
from infra.databases.broker import connection_broker
from infra.databases.requests import held_add, held_discard


class DatabaseWrapper(base.DatabaseWrapper):
    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        if self.is_in_memory_db():
            return super().get_new_connection(conn_params)
        raw = connection_broker.acquire(
            key=connection_key("sqlite", {**conn_params, "init_commands": tuple(self.init_commands)}),
            alias=self.alias,
            connect=lambda: super(DatabaseWrapper, self).get_new_connection(conn_params),
            check=_always,
        )
        held_add(self)
        return raw

    def _close(self) -> None:
        raw = self.connection
        if raw is None:
            return
        if self.is_in_memory_db():
            super()._close()
            return
        held_discard(self)
        with self.wrap_database_errors:
            connection_broker.release(raw, reusable=not raw.in_transaction)


def _always(raw: Any) -> bool:
    return True
