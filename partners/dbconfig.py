"""Build complete Django database settings from a URL.

Pure functions with no dependency on django.db, so settings.py can use them for
`default` and the alias registry can use them for partner databases registered at
runtime. Django fills defaults (TIME_ZONE, TEST, ...) only at start-up, so a runtime
alias must arrive complete or it fails later with KeyError.
"""

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import environ

SQLITE_ENGINE = "django.db.backends.sqlite3"
POSTGRES_ENGINE = "django.db.backends.postgresql"


def database_settings(
    url: str,
    *,
    base_dir: Path,
    conn_max_age: int | None = 60,
    connect_timeout: int = 5,
    statement_timeout_ms: int = 0,
    lock_timeout_ms: int = 0,
    pool_max_size: int = 0,
    prepared_statements: bool = True,
    sqlite_busy_timeout: int = 20,
) -> dict[str, Any]:
    """Return a full DATABASES entry for `url` with the engine's production options.

    PostgreSQL gets bounded connect/statement/lock timeouts (0 = off) and, when
    `pool_max_size` > 0, a psycopg connection pool of that size per process instead of
    persistent per-thread connections. `prepared_statements` lets the postback's
    statements (conversions.statements) be prepared once per connection; the ORM's
    queries are bound client-side and never prepared either way.
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
        if server_options:
            options.setdefault("options", " ".join(server_options))
        if prepared_statements:
            # Django turns psycopg's statement preparation off (None) unless asked.
            options.setdefault("prepare_threshold", 5)
        if pool_max_size > 0:
            # Django's pool replaces persistent connections (it refuses CONN_MAX_AGE with it);
            # waiting for a free connection is bounded like connecting is.
            options.setdefault(
                "pool",
                {"min_size": 1, "max_size": pool_max_size, "timeout": connect_timeout, "max_idle": 300},
            )
    if "pool" in options:
        conn_max_age = 0
    return {
        "ENGINE": engine,
        "NAME": name,
        "USER": config.get("USER", ""),
        "PASSWORD": config.get("PASSWORD", ""),
        "HOST": config.get("HOST", ""),
        "PORT": str(config.get("PORT", "") or ""),
        "OPTIONS": options,
        "ATOMIC_REQUESTS": False,
        "AUTOCOMMIT": True,
        "CONN_MAX_AGE": conn_max_age,
        "CONN_HEALTH_CHECKS": True,
        "TIME_ZONE": None,
        "TEST": {
            "CHARSET": None,
            "COLLATION": None,
            "MIGRATE": True,
            "MIRROR": None,
            "NAME": None,
        },
    }


def url_mask_password(url: str) -> str:
    """Return `url` with its password replaced by asterisks (for display and logs)."""
    if not url:
        return url
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:****@{host}"))
