"""Partner database aliases, registered at runtime from Partner rows.

A partner's storage is a database and, on PostgreSQL, a schema in it: with a
PARTNER_DATABASE_URL that has no `{name}` every partner is a schema (named
`Partner.database_name`) of that one database; with `{name}` each has a database of its
own; a partner's own `database_url` places it anywhere (`?schema=NAME` picks a schema).
Every partner is a Django alias named after `Partner.database_name`.
`alias_ensure(partner)` (what `Partner.database_alias` calls) registers it the first
time it is needed and re-points it when the partner's URL changed, so callers never
register anything themselves. A re-pointed alias takes effect in every thread: each
thread's connection object built from the old settings is replaced the next time that
thread reaches the alias, and the old database's pooled connections are closed.
"""

import copy
import logging
import secrets
import threading
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections

from infra.databases.broker import connection_broker
from infra.databases.config import database_settings, url_schema_split, url_with_schema
from infra.masking import url_mask_password

logger = logging.getLogger("partners.databases")

_lock = threading.Lock()
# alias -> (url, the Partner.updated_at it came from): a stale Partner object (one a
# request loaded before an edit) never points an alias back at an old database.
_registered: dict[str, tuple[str, datetime | None]] = {}


def partner_database_url(partner: Any) -> str:
    """Where the partner's conversions live: its own URL, else the PARTNER_DATABASE_URL
    template with {name} filled, or (no {name}, PostgreSQL) the shared database with the
    partner's schema named (`?schema=`)."""
    if partner.database_url:
        return partner.database_url
    return shared_template_url(settings.PARTNER_DATABASE_URL, partner.database_name)


def shared_template_url(template: str, name: str) -> str:
    """The template's location for the partner database `name`."""
    if "{name}" in template:
        return template.replace("{name}", name)
    if template.startswith(("postgres://", "postgresql://", "pgsql://")):
        return url_with_schema(template, name)
    return template


def template_is_shared() -> bool:
    """Whether PARTNER_DATABASE_URL puts partners in one database (a schema each)."""
    return "{name}" not in settings.PARTNER_DATABASE_URL


def partner_schema(partner: Any) -> str:
    """The partner's schema in a shared database, or "" (a database of its own)."""
    return url_schema_split(partner_database_url(partner))[1]


def alias_settings(url: str) -> dict[str, Any]:
    """A complete DATABASES entry for a partner database at `url`.

    Django fills defaults only at start-up, so a runtime alias must arrive complete.
    """
    return database_settings(url, **settings.DATABASE_OPTIONS)


def alias_ensure(partner: Any) -> str:
    """The partner's alias, registered and pointing at its current URL, with this
    thread's connection object built from the current settings."""
    alias = partner.database_name
    if alias == DEFAULT_DB_ALIAS or not alias:
        raise ValueError(f"a partner cannot use the database alias {alias!r}")
    url = partner_database_url(partner)
    registered = _registered.get(alias)
    if registered is None or registered[0] != url:
        _register(alias, url, partner.updated_at)
    _thread_connection_refresh(alias)
    return alias


def _register(alias: str, url: str, version: datetime | None) -> None:
    with _lock:
        registered = _registered.get(alias)
        if registered is not None:
            if registered[0] == url:
                return
            newer = registered[1]
            if version is not None and newer is not None and version < newer:
                return  # a Partner loaded before the last edit: the alias keeps the newer URL
        config = alias_settings(url)
        # Copy-on-write: other threads may be iterating connections.all() right now.
        # (Replacing ConnectionHandler.settings, a cached_property, is how an alias is
        # added after start-up; checked against Django 5.2.)
        databases = dict(connections.settings)
        databases[alias] = config
        connections.settings = databases
        settings.DATABASES = databases
        _registered[alias] = (url, version)
    if registered is not None:
        connection_broker.retire(alias)
        logger.info("partner database %s now points at %s", alias, url_mask_password(url))


def _thread_connection_refresh(alias: str) -> None:
    # A connection object keeps the settings it was built with: one built before the
    # alias was re-pointed is replaced (unless it is inside a transaction, which must
    # finish where it started).
    connection = connections[alias]
    if connection.settings_dict is not connections.settings[alias] and not connection.in_atomic_block:
        connection.close()
        del connections[alias]


def alias_register_copy(config: dict[str, Any], *, name: str, schema: str = "") -> str:
    """Register a scratch alias with `config`'s settings for the database `name` (and, on
    PostgreSQL, its `schema`, worked on as the login role); return it."""
    alias = f"__scratch_{secrets.token_hex(4)}"
    scratch = copy.deepcopy(config)
    scratch["NAME"] = name
    scratch["SCHEMA"] = schema
    scratch["ROLE"] = ""
    with _lock:
        databases = dict(connections.settings)
        databases[alias] = scratch
        connections.settings = databases
        settings.DATABASES = databases
    return alias


def alias_unregister(alias: str) -> None:
    """Forget a registered partner alias and close its connections."""
    if alias == DEFAULT_DB_ALIAS or alias not in connections.settings:
        return
    connections[alias].close()
    with _lock:
        databases = {key: value for key, value in connections.settings.items() if key != alias}
        connections.settings = databases
        settings.DATABASES = databases
        _registered.pop(alias, None)
    del connections[alias]
    connection_broker.retire(alias)
