"""Build complete Django database settings from a URL.

Pure functions with no dependency on django.db, so settings.py can use them for
`default` and the alias registry can use them for partner databases registered at
runtime. Django fills defaults (TIME_ZONE, TEST, ...) only at start-up, so a runtime
alias must arrive complete or it fails later with KeyError.
"""

import hashlib
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

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


# Longest PostgreSQL identifier (database, schema or role name), in bytes.
POSTGRES_NAME_LIMIT = 63
# The URL query option that names a schema inside a PostgreSQL database: it never reaches
# the driver.
SCHEMA_OPTION = "schema"


def url_schema_split(url: str) -> tuple[str, str]:
    """(the URL without its `schema` option, that schema or "")."""
    parts = urlsplit(url)
    if not parts.query:
        return url, ""
    query = parse_qsl(parts.query, keep_blank_values=True)
    schema = next((value for name, value in query if name == SCHEMA_OPTION), "")
    rest = [(name, value) for name, value in query if name != SCHEMA_OPTION]
    if len(rest) == len(query):
        return url, ""
    return urlunsplit(parts._replace(query=urlencode(rest))), schema


def url_with_schema(url: str, schema: str) -> str:
    """`url` naming `schema` (replacing any schema it named)."""
    base, _ = url_schema_split(url)
    if not schema:
        return base
    parts = urlsplit(base)
    query = parse_qsl(parts.query, keep_blank_values=True) + [(SCHEMA_OPTION, schema)]
    return urlunsplit(parts._replace(query=urlencode(query)))


def schema_role(schema: str, database: str) -> str:
    """The PostgreSQL role a partner's statements run as: it may use only its own schema.

    Roles belong to the whole server, schemas to one database, so the role names both
    (`acme_db@partners`), shortened with a hash of the database name past 63 bytes.
    """
    role = f"{schema}@{database}"
    if len(role.encode()) <= POSTGRES_NAME_LIMIT:
        return role
    digest = hashlib.sha256(database.encode()).hexdigest()[:10]
    return f"{schema[: POSTGRES_NAME_LIMIT - 11]}@{digest}"


# The URL schemes of the two supported engines (django-environ's names for them).
URL_SCHEMES = {
    "sqlite": SQLITE_ENGINE,
    "postgres": POSTGRES_ENGINE,
    "postgresql": POSTGRES_ENGINE,
    "pgsql": POSTGRES_ENGINE,
}


def database_url_check(url: str) -> None:
    """Raise ValueError saying what is wrong with a database URL, in one line (no password shown)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in URL_SCHEMES:
        shown = f"'{scheme}://'" if "://" in url else "no scheme"
        raise ValueError(
            f"has {shown}; use postgres://USER[:PASSWORD]@HOST[:PORT]/NAME or sqlite:////absolute/path.sqlite3"
        )
    if URL_SCHEMES[scheme] == POSTGRES_ENGINE and not parts.path.strip("/"):
        raise ValueError("names no database; use postgres://USER[:PASSWORD]@HOST[:PORT]/NAME")
    try:
        parts.port  # noqa: B018 (raises ValueError for a port that is not a number)
    except ValueError as exc:
        raise ValueError(f"has an invalid port ({exc})") from None


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
    database_url_check(url)
    url, schema = url_schema_split(url)
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
        # A partner's schema in a shared PostgreSQL database and the role its statements
        # run as (backends/postgresql); "" for a database of its own. Not connection
        # parameters: partners of one database share its connections.
        "SCHEMA": schema if engine == POSTGRES_ENGINE else "",
        "ROLE": schema_role(schema, name) if schema and engine == POSTGRES_ENGINE else "",
        "TRANSACTION_POOLER": transaction_pooler,
        "TEST": {
            "CHARSET": None,
            "COLLATION": None,
            "MIGRATE": True,
            "MIRROR": None,
            "NAME": None,
        },
    }
