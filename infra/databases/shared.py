"""Reading many partners of one shared PostgreSQL database in one statement.

A partner's alias is switched to the partner's schema and role when its connection is
lent (backends/postgresql), so it sees only its own tables. A statement over many
partners at once (`SELECT ... FROM "acme_db"."partner_conversions" UNION ALL ...`) needs
a connection to the same database that is not switched: the login role, a member of
every partner's role, reads each schema by its qualified name. `shared_database_alias`
registers one such alias per shared database (once per process) and
`shared_database_cursor` lends its connection for one piece of work. Run that work inside
`partner_database(partner)` of one of the database's partners: that partner's bulkhead
and breaker guard it, and its errors become PartnerDatabaseUnavailable as any
partner's would.
"""

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from django.db import connections
from django.db.backends.utils import CursorWrapper

from infra.databases.config import POSTGRES_ENGINES
from infra.databases.registry import alias_register_copy

# What a partner's settings carry that its database's other partners do not.
PARTNER_SETTINGS = frozenset({"SCHEMA", "ROLE"})

_lock = threading.Lock()
# The shared database's settings (as text) -> its alias worked on as the login role.
_shared_aliases: dict[str, str] = {}


def shared_database_key(alias: str) -> str | None:
    """What every partner alias of one shared database has in common (its settings but the
    schema and role), or None when `alias` is not a schema of a shared PostgreSQL database
    (a database of its own, SQLite)."""
    config = connections.settings[alias]
    if config["ENGINE"] not in POSTGRES_ENGINES or not config.get("SCHEMA"):
        return None
    common = {name: value for name, value in config.items() if name not in PARTNER_SETTINGS}
    # The whole connection settings: partners that differ in any of them (a timeout in
    # one partner's URL) never share a connection, so they are not read together either.
    return json.dumps(common, sort_keys=True, default=str)


def shared_database_alias(alias: str) -> str:
    """The alias of the database that holds the partner alias `alias`'s schema, with no
    schema and no partner role (the login role's view: every schema, by qualified name).
    Registered the first time a database is asked for; its connections are the broker's,
    shared with the database's partners."""
    key = shared_database_key(alias)
    if key is None:
        raise ValueError(f"database alias {alias!r} is not a schema of a shared PostgreSQL database")
    shared = _shared_aliases.get(key)
    if shared is None:
        with _lock:
            shared = _shared_aliases.get(key)
            if shared is None:
                config = connections.settings[alias]
                shared = alias_register_copy(config, name=config["NAME"], schema="")
                _shared_aliases[key] = shared
    return shared


@contextmanager
def shared_database_cursor(alias: str) -> Iterator[CursorWrapper]:
    """A cursor on the shared database holding the partner alias `alias`'s schema, as the
    login role; the connection goes back to the broker when the block ends."""
    connection = connections[shared_database_alias(alias)]
    try:
        with connection.cursor() as cursor:
            yield cursor
    finally:
        if not connection.in_atomic_block:
            connection.close()
