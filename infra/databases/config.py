"""Build complete Django database settings from a URL.

Pure functions with no dependency on django.db, so settings.py can use them for
`default` and the alias registry can use them for partner databases registered at
runtime. Django fills defaults (TIME_ZONE, TEST, ...) only at start-up, so a runtime
alias must arrive complete or it fails later with KeyError.
"""

from pathlib import Path
from typing import Any

import environ

SQLITE_ENGINE = "django.db.backends.sqlite3"
POSTGRES_ENGINE = "django.db.backends.postgresql"
# Django's backends with their connections lent by the process-wide broker
# (infra.databases.broker): every alias, `default` included, uses these.
BROKERED_ENGINES = {
    SQLITE_ENGINE: "infra.databases.backends.sqlite3",
    POSTGRES_ENGINE: "infra.databases.backends.postgresql",
}
SQLITE_ENGINES = frozenset({SQLITE_ENGINE, BROKERED_ENGINES[SQLITE_ENGINE]})
POSTGRES_ENGINES = frozenset({POSTGRES_ENGINE, BROKERED_ENGINES[POSTGRES_ENGINE]})


def database_settings(
    url: str,
    *,
    base_dir: Path,
    connect_timeout: int = 5,
    statement_timeout_ms: int = 0,
    lock_timeout_ms: int = 0,
    prepared_statements: bool = True,
    transaction_pooler: bool = False,
    sqlite_busy_timeout: int = 20,
) -> dict[str, Any]:
    """Return a full DATABASES entry for `url` with the engine's production options.

    PostgreSQL gets bounded connect/statement/lock timeouts (0 = off).
    `prepared_statements` lets the postback's statements (conversions.ingest.statements) be
    prepared once per connection; the ORM's queries are bound client-side and never
    prepared either way. Behind a pooler in transaction mode (`transaction_pooler`,
    e.g. PgBouncer) a session outlives no transaction: no settings are sent at connect
    (put the timeouts on the database role instead) and no server-side cursors are
    used. Connections come from the process-wide broker: Django gives
    its connection back at the end of every request (CONN_MAX_AGE 0) and the broker
    decides what stays open (DB_MAX_CONNECTIONS, DB_IDLE_SECONDS, DB_CONN_MAX_AGE).
    """
    config = environ.Env.db_url_config(url)
    engine = config["ENGINE"]
    options: dict[str, Any] = dict(config.get("OPTIONS") or {})
    name = config.get("NAME", "")
    if engine == SQLITE_ENGINE:
        if name and name != ":memory:" and not Path(name).is_absolute():
            name = str(base_dir / name)
        # WAL lets readers run beside the writer; IMMEDIATE takes the write lock at
        # BEGIN so two transactions never deadlock upgrading a read lock.
        options.setdefault("timeout", sqlite_busy_timeout)
        options.setdefault("transaction_mode", "IMMEDIATE")
        options.setdefault(
            "init_command",
            "PRAGMA journal_mode=WAL;PRAGMA synchronous=NORMAL",
        )
    elif engine == POSTGRES_ENGINE:
        options.setdefault("connect_timeout", connect_timeout)
        server_options = [
            f"-c {name}={value}"
            for name, value in (("statement_timeout", statement_timeout_ms), ("lock_timeout", lock_timeout_ms))
            if value
        ]
        # The session starts in UTC (settings.TIME_ZONE), so Django needs no SET TIME ZONE
        # round trip on each new connection.
        server_options.append("-c TimeZone=UTC")
        if server_options and not transaction_pooler:
            options.setdefault("options", " ".join(server_options))
        if prepared_statements:
            # Django turns psycopg's statement preparation off (None) unless asked.
            options.setdefault("prepare_threshold", 5)
    return {
        "ENGINE": BROKERED_ENGINES.get(engine, engine),
        "NAME": name,
        "USER": config.get("USER", ""),
        "PASSWORD": config.get("PASSWORD", ""),
        "HOST": config.get("HOST", ""),
        "PORT": str(config.get("PORT", "") or ""),
        "OPTIONS": options,
        "ATOMIC_REQUESTS": False,
        "AUTOCOMMIT": True,
        "CONN_MAX_AGE": 0,
        "CONN_HEALTH_CHECKS": True,
        "DISABLE_SERVER_SIDE_CURSORS": transaction_pooler,
        "TIME_ZONE": None,
        "TEST": {
            "CHARSET": None,
            "COLLATION": None,
            "MIGRATE": True,
            "MIRROR": None,
            "NAME": None,
        },
    }
