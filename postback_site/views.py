"""Service-level endpoints: health and info; the JSON error answers outside the admin."""

import re
import threading
import time
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import BadRequest, DisallowedHost
from django.db import DEFAULT_DB_ALIAS, DatabaseError, InterfaceError, OperationalError, connections
from django.db.migrations.executor import MigrationExecutor
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from infra.databases import (
    NOT_INITIALISED,
    NOT_PROVISIONED,
    ConnectionsExhausted,
    PartnerDatabaseUnavailable,
    database_ping,
    error_first_line,
    migrations_to_apply,
    partner_database_state,
    partner_database_url,
)
from infra.databases.breaker import DatabaseGuard, database_guard
from infra.databases.config import SQLITE_ENGINES
from infra.databases.registry import alias_register_copy, alias_settings, alias_unregister
from infra.state import process_state_register
from partners.models import Partner
from partners.selectors import partner_directory, partner_list_served

# (alias, host, port, name) of databases found fully migrated: a schema never goes
# back, so the migration files are read until it is complete, not on every probe.
_migrated: set[tuple] = set()
process_state_register("postback_site.health_migrated", _migrated.clear)


def _database_key(alias: str) -> tuple:
    config = connections.settings.get(alias) or {}
    return (alias, config.get("HOST"), config.get("PORT"), config.get("NAME"))


def _unapplied_migrations(alias: str, app_labels: tuple[str, ...] | None = None) -> list[str]:
    """Migrations (of `app_labels`, else every app) that `migrate` would still apply on `alias`."""
    key = (*_database_key(alias), app_labels)
    if key in _migrated:
        return []
    executor = MigrationExecutor(connections[alias])
    targets = [node for node in executor.loader.graph.leaf_nodes() if app_labels is None or node[0] in app_labels]
    unapplied = [
        f"{migration.app_label}.{migration.name}" for migration, _backwards in executor.migration_plan(targets)
    ]
    if not unapplied:
        _migrated.add(key)
    return unapplied


def configuration_database_state() -> str:
    """'ok', or what keeps `default` from serving: unreachable, not initialised, migrations pending."""
    # Reachability first: a database that does not answer costs one timeout, not two.
    unreachable = database_ping(DEFAULT_DB_ALIAS, "SELECT 1")
    if unreachable is not None:
        return f"unreachable: {unreachable}"
    if database_ping(DEFAULT_DB_ALIAS, "SELECT 1 FROM partners LIMIT 1") is not None:
        return NOT_INITIALISED
    try:
        unapplied = _unapplied_migrations(DEFAULT_DB_ALIAS)
    except DatabaseError as exc:
        return f"unreachable: {str(exc).strip() or exc.__class__.__name__}"
    return migrations_to_apply(unapplied) if unapplied else "ok"


def _unavailable(body: dict, message: str) -> Response:
    body = {**body, "status": "error", "message": message}
    return Response(body, status=503, headers={"Retry-After": str(settings.POSTBACK_RETRY_AFTER)})


# --- What /health knows of the partners' databases ----------------------------------
# With hundreds of partners, connecting to each one's database on every probe takes
# seconds, and platform probes give up after one. The summary check connects to
# `default`, to each shared database once and to one database of its own per server;
# every other partner is reported from its database's breaker (infra/databases/breaker.py),
# in process, with no I/O. `?partner=CODE` runs the full check of one partner.

# Breakers of databases of their own whose time is up with no request since (see
# _breaker) get their probe from a summary check, this many per check: without it a
# partner without traffic would stay "failing" for good, and an instance its health
# check keeps out of traffic would never recover.
HALF_OPEN_PROBES_PER_CHECK = 2
INVALID_URL = "invalid database URL: see the partner's settings"

# The schemas of a shared database that hold a partner's tables (provisioned): all of
# them, which costs less than sending the names of a thousand partners.
_PROVISIONED_SCHEMAS = (
    "SELECT n.nspname FROM pg_catalog.pg_namespace n"
    " JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = 'partner_conversions'"
)
# The same for one schema.
_PROVISIONED_SCHEMA = _PROVISIONED_SCHEMAS + " WHERE n.nspname = %s"
# Which of the partners' databases of their own exist on a PostgreSQL server.
_EXISTING_DATABASES = "SELECT datname FROM pg_catalog.pg_database WHERE datname = ANY(%s)"


class _Storage:
    """Where a partner's conversions live, as far as a health check cares (its keys
    computed once: the summary check reads them for every partner)."""

    __slots__ = ("url", "engine", "name", "schema", "user", "database", "key", "server")

    def __init__(self, url: str, config: dict[str, Any]) -> None:
        self.url = url
        self.engine, self.name, self.user = config["ENGINE"], config["NAME"], config.get("USER", "")
        self.schema = config.get("SCHEMA", "")  # in a shared PostgreSQL database; "" for a database of its own
        host, port = config.get("HOST", ""), config.get("PORT", "")
        # The database (a shared one holds many partners' schemas); the database and
        # schema, as its breaker is keyed (breaker.database_guard); the PostgreSQL server,
        # or the directory of a SQLite file.
        self.database = (self.engine, host, port, self.name)
        self.key = (*self.database, self.schema)
        sqlite = self.engine in SQLITE_ENGINES
        self.server = (self.engine, str(Path(self.name).parent)) if sqlite else (self.engine, host, port)


# (database_url, database_name, PARTNER_DATABASE_URL) -> the partner's storage (None:
# its URL cannot be read), parsed once per process.
_storages: dict[tuple, _Storage | None] = {}
STORAGES_KEPT = 100_000
# (shared database, user) -> the alias the checks reach it by: the partners' own
# connections (same server, database and user), used in no schema and as no role.
_probe_aliases: dict[tuple, str] = {}
_probe_lock = threading.Lock()


def _probe_aliases_forget() -> None:
    with _probe_lock:
        aliases = list(_probe_aliases.values())
        _probe_aliases.clear()
    for alias in aliases:
        alias_unregister(alias)


process_state_register("postback_site.health_storages", _storages.clear)
process_state_register("postback_site.health_probe_aliases", _probe_aliases_forget)


def _storage(partner: Any, template: str | None = None) -> _Storage | None:
    """Where the partner's conversions live, or None when its URL cannot be read.
    (`template`: settings.PARTNER_DATABASE_URL, read once by a caller that asks for many.)"""
    # Keyed by what partner_database_url reads, which costs a URL parse per partner.
    key = (partner.database_url, partner.database_name, settings.PARTNER_DATABASE_URL if template is None else template)
    if key in _storages:
        return _storages[key]
    url = partner_database_url(partner)
    try:
        storage = _Storage(url, alias_settings(url))
    except Exception:  # an unreadable URL is that partner's state, not a 500 (never shown: it may hold a password)
        storage = None
    if len(_storages) >= STORAGES_KEPT:
        _storages.clear()  # URLs changed many times over in this process: start again
    _storages[key] = storage
    return storage


def _probe_alias(storage: _Storage) -> str:
    """An alias of the shared database `storage` is in, in no schema and as no role."""
    key = (storage.database, storage.user)
    alias = _probe_aliases.get(key)
    if alias is not None and alias in connections.settings:
        return alias
    with _probe_lock:
        alias = _probe_aliases.get(key)
        if alias is None or alias not in connections.settings:
            config = alias_settings(storage.url)
            alias = alias_register_copy(config, name=config["NAME"])
            _probe_aliases[key] = alias
    return alias


def _probe(alias: str, query: str, params: list) -> tuple[list | None, str | None]:
    """(rows, None) of one read on `alias`, or (None, why not), through its database's
    breaker as `partner_database` goes: refused at once while the breaker is open, a
    failure to answer opens it, an answer closes it."""
    guard = database_guard(alias)
    try:
        ticket = guard.admit(alias)
    except PartnerDatabaseUnavailable as exc:
        return None, exc.reason
    failure = None
    connection = connections[alias]
    try:
        with connection.cursor() as cursor:
            cursor.execute(query, params)
            return cursor.fetchall(), None
    except ConnectionsExhausted as exc:  # the process's connections: not this database's fault
        return None, error_first_line(exc)
    except (OperationalError, InterfaceError) as exc:
        failure = error_first_line(exc)
        return None, failure
    except DatabaseError as exc:  # it answered, with an error
        return None, error_first_line(exc)
    finally:
        guard.release(ticket, failure=failure)
        if not connection.in_atomic_block:
            connection.close()


def _breaker(guard: DatabaseGuard | None) -> tuple[str, str]:
    """(state, reason) of a database's breaker, read in process without admitting anything:
    "closed"; "open" while it refuses requests; "half-open" once its time is up, when the
    next request will be its probe. (breaker.py exposes `is_open` only: the time and the
    reason are read from its fields.)"""
    if guard is None or not guard.is_open:
        return "closed", ""
    reason = getattr(guard, "_reason", "") or "did not answer"
    if time.monotonic() < getattr(guard, "_open_until", 0.0) or getattr(guard, "_probing", False):
        return "open", reason
    return "half-open", reason


def _used_storages() -> dict[tuple, str]:
    """(engine, host, port, name, schema) -> an alias registered for it in this process. A
    storage no alias points at has not been used by this process: it has no breaker."""
    used: dict[tuple, str] = {}
    for alias, config in connections.settings.items():
        key = (
            config.get("ENGINE"),
            config.get("HOST"),
            config.get("PORT"),
            config.get("NAME"),
            config.get("SCHEMA", ""),
        )
        used.setdefault(key, alias)
    return used


def partner_full_state(partner: Any) -> str:
    """The full check of one partner: reachable, provisioned, no migration to apply.

    A schema of a shared database is first looked up in that database's catalog, so a
    partner not provisioned yet is named so (its role does not exist yet either).
    """
    storage = _storage(partner)
    if storage is None:
        return INVALID_URL
    if storage.schema:
        rows, reason = _probe(_probe_alias(storage), _PROVISIONED_SCHEMA, [storage.schema])
        if reason is not None:
            return reason
        if not rows:
            return NOT_PROVISIONED
    return partner_database_state(partner)


def served_partners_state(partners: list[Any]) -> tuple[dict[str, str], dict[str, int]]:
    """({database_name: state} in the partners' order, what was checked), with database
    round trips that do not grow with the number of partners:

    - a shared database (its partners are schemas): one query says which partners'
      schemas hold their tables (the others are not provisioned);
    - databases of their own (PostgreSQL, or SQLite files), per server (a SQLite
      directory): on PostgreSQL, one query says which of them exist (the others are not
      provisioned);
    - per shared database and per server, one partner gets the full check
      (`partner_database_state`): the first whose breaker is not open. Every other
      partner's state is its breaker's (one per database or schema), read in process:
      failing while it is open, else "ok". A breaker whose time is up gets its probe from
      this check, HALF_OPEN_PROBES_PER_CHECK of them at most.
    """
    check = _SummaryCheck()
    states: dict[str, str] = {}
    storages: dict[tuple, list[Any]] = {}  # storage key -> its partners (one, unless misconfigured)
    databases: dict[tuple, list[tuple]] = {}  # database -> its storages
    template = settings.PARTNER_DATABASE_URL
    for partner in partners:
        storage = _storage(partner, template)
        if storage is None:
            states[partner.database_name] = INVALID_URL
            continue
        check.storages[partner.database_name] = storage
        if storage.key not in storages:
            databases.setdefault(storage.database, []).append(storage.key)
        storages.setdefault(storage.key, []).append(partner)

    servers: dict[tuple, list[tuple]] = {}  # databases of their own, by server
    for keys in databases.values():
        if any(schema for *_database, schema in keys):
            states.update(check.shared_database([storages[key] for key in keys]))
        else:
            server = check.storages[storages[keys[0]][0].database_name].server
            servers.setdefault(server, []).extend(keys)
    for keys in servers.values():
        states.update(check.server([storages[key] for key in keys]))
    ordered = {partner.database_name: states[partner.database_name] for partner in partners}
    return ordered, {"partners": len(partners), "databases": len(databases), "probed": check.probed}


class _SummaryCheck:
    """The state of groups of partners, with one full check per group (see
    served_partners_state). A unit is the partners of one storage: one partner, unless two
    were given the same database."""

    def __init__(self) -> None:
        self.storages: dict[str, _Storage] = {}  # database_name -> storage
        self.used = _used_storages()
        self.half_open_probes = HALF_OPEN_PROBES_PER_CHECK
        self.probed = 0

    def shared_database(self, units: list[list[Any]]) -> dict[str, str]:
        """The units of one shared database."""
        schemas = {unit[0].database_name: self._storage(unit).schema or "public" for unit in units}
        rows, reason = _probe(_probe_alias(self._storage(units[0])), _PROVISIONED_SCHEMAS, [])
        if reason is not None:
            return {partner.database_name: reason for unit in units for partner in unit}
        provisioned = {row[0] for row in rows}
        served = [unit for unit in units if schemas[unit[0].database_name] in provisioned]
        states = {partner.database_name: NOT_PROVISIONED for unit in units for partner in unit}
        states.update(self._states(served))
        return states

    def server(self, units: list[list[Any]]) -> dict[str, str]:
        """The units of the databases of their own on one server (or in one SQLite directory)."""
        return self._states(units, existence=True)

    def _storage(self, unit: list[Any]) -> _Storage:
        return self.storages[unit[0].database_name]

    def _breaker(self, storage: _Storage) -> tuple[str, str]:
        alias = self.used.get(storage.key)
        return _breaker(database_guard(alias)) if alias is not None else ("closed", "")

    def _full_check(self, unit: list[Any]) -> str:
        self.probed += 1
        return partner_database_state(unit[0])

    def _states(self, units: list[list[Any]], *, existence: bool = False) -> dict[str, str]:
        """Each unit's state. The first (by database name) whose breaker is closed, else
        whose breaker's time is up, gets the full check; when it passes and `existence`
        (PostgreSQL databases of their own), one query says which of the units' databases
        exist. Each other unit's state is its breaker's."""
        units = sorted(units, key=lambda unit: unit[0].database_name)
        storages = [self._storage(unit) for unit in units]
        breakers = [self._breaker(storage) for storage in storages]
        chosen = next((i for i, (state, _) in enumerate(breakers) if state == "closed"), None)
        if chosen is None:
            chosen = next((i for i, (state, _) in enumerate(breakers) if state == "half-open"), None)
        states: dict[str, str] = {}
        missing: set[str] = set()
        if chosen is not None:
            representative = units[chosen]
            state = self._full_check(representative)
            states.update((partner.database_name, state) for partner in representative)
            if existence and state == "ok" and storages[chosen].engine not in SQLITE_ENGINES:
                names = sorted({storage.name for storage in storages})
                rows, _reason = _probe(representative[0].database_name, _EXISTING_DATABASES, [names])
                missing = set(names) - {row[0] for row in rows} if rows is not None else set()
        for index, unit in enumerate(units):
            if index == chosen:
                continue
            breaker, reason = breakers[index]
            if breaker == "half-open" and self.half_open_probes > 0:
                self.half_open_probes -= 1
                state = self._full_check(unit)
            elif breaker != "closed":
                state = f"failing, not retried for a few seconds: {reason}"
            elif storages[index].name in missing:
                state = NOT_PROVISIONED
            else:
                state = "ok"
            for partner in unit:
                states[partner.database_name] = state
        return states


# --- OpenAPI description of /health ---------------------------------------------------


class HealthCheckedSerializer(serializers.Serializer):
    partners = serializers.IntegerField(help_text="Served partners, each under `databases`.")
    databases = serializers.IntegerField(help_text="Their distinct databases (a shared database counts once).")
    probed = serializers.IntegerField(
        help_text="Partners given the full check (one per shared database and per server, and breakers whose "
        "time was up); the other partners' state is their breaker's."
    )


class HealthSerializer(serializers.Serializer):
    status = serializers.CharField(
        help_text="`ok` (200), `degraded` (200: some partners' databases cannot serve, named in `failing`) "
        "or `error` (503)."
    )
    databases = serializers.DictField(
        child=serializers.CharField(),
        help_text="`default` and each served partner's `database_name` -> `ok` or what is wrong.",
    )
    failing = serializers.ListField(
        child=serializers.CharField(),
        required=False,
        help_text="`degraded` and `error` only: the names whose state is not `ok`.",
    )
    message = serializers.CharField(
        required=False, help_text="`degraded` and `error` only: what is wrong, in one line."
    )
    checked = HealthCheckedSerializer(required=False, help_text="Without `partner`: what this check covered.")
    partner = serializers.CharField(required=False, help_text="With `partner`: the code checked.")


class HealthErrorSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=("error",))
    message = serializers.CharField()


class HealthView(APIView):
    """`GET /health`: 200 while the service can serve, 503 when it cannot.

    The service cannot serve without `default` (its configuration), nor when it serves
    partners and not one of them can be served (e.g. a service of one partner whose
    database is down). A partner whose database is unreachable or not provisioned is that
    partner's problem: 200 with `status` `degraded`, naming it in `failing` and `message`;
    its own postbacks answer 503 + Retry-After meanwhile, the others are served.

    Without a parameter (the platform probe) it checks `default`, each shared partner
    database once and one partner database of its own per server, whatever the number of
    partners; the other partners' state is their database's breaker, in this process.
    `?partner=CODE` runs the full check of that partner's database (reachable,
    provisioned, no migration to apply); a code no served partner has is a 404. Each
    problem is named: unreachable, not initialised or provisioned, migrations still to
    apply (each of those says to run init_partners), an open breaker.
    """

    authentication_classes = ()
    permission_classes = ()

    @extend_schema(
        operation_id="health",
        parameters=[
            OpenApiParameter(
                "partner",
                OpenApiTypes.STR,
                OpenApiParameter.QUERY,
                description="A partner code: the full check of that partner's database only "
                "(reachable, provisioned, no migration to apply), beside `default`.",
            )
        ],
        responses={
            200: OpenApiResponse(
                HealthSerializer,
                description="The service can serve: `ok`, or `degraded` naming the partners whose database "
                "cannot (`failing`, `message`).",
            ),
            404: OpenApiResponse(HealthErrorSerializer, description="`partner` names no active partner served here."),
            503: OpenApiResponse(
                HealthSerializer,
                description="The configuration database cannot serve, no served partner can, or (with `partner`) "
                "that partner's database cannot (`failing`, `message`); with `Retry-After`.",
            ),
        },
        tags=["service"],
    )
    def get(self, request: Request) -> Response:
        code = request.query_params.get("partner")
        state = configuration_database_state()
        checks: dict[str, str] = {DEFAULT_DB_ALIAS: state}
        if state != "ok":
            return _unavailable({"databases": checks, "failing": [DEFAULT_DB_ALIAS]}, f"configuration database {state}")
        try:
            # One partner's check reads its row now; the summary reports the partners this
            # process serves (its directory, re-read every PARTNER_CACHE_SECONDS).
            partners = _served_partner(code) if code is not None else partner_directory.active()
        except DatabaseError as exc:
            checks[DEFAULT_DB_ALIAS] = f"unreachable: {str(exc).strip() or exc.__class__.__name__}"
            partners = []
        body: dict[str, Any] = {"databases": checks}
        if code is not None and checks[DEFAULT_DB_ALIAS] == "ok":
            partner = partners[0] if partners else None
            if partner is None:
                return Response(
                    {"status": "error", "message": f"Unknown partner {_shown(code)!r}: no active partner served here"},
                    status=404,
                )
            body["partner"] = code
            checks[partner.database_name] = partner_full_state(partner)
        elif code is None:
            states, body["checked"] = served_partners_state(partners)
            checks.update(states)
        failing = sorted(alias for alias, state in checks.items() if state != "ok")
        partner_names = [alias for alias in checks if alias != DEFAULT_DB_ALIAS]
        # The service cannot serve without its configuration, nor when no partner it serves can
        # be (one asked for with ?partner= included); one failing partner among others is its own problem.
        if DEFAULT_DB_ALIAS in failing or (partner_names and set(partner_names) <= set(failing)):
            return _unavailable({**body, "failing": failing}, _failing_message(failing))
        if failing:
            served = len(partner_names) - len(failing)
            message = f"{_failing_message(failing)}; the other {served} partner(s) are served"
            return Response({"status": "degraded", **body, "failing": failing, "message": message})
        return Response({"status": "ok", **body})


PARTNER_CODE = re.compile(r"[a-z0-9_]{1,50}")  # Partner.partner_code


def _served_partner(code: str) -> list[Partner]:
    """[the active partner `code` if this instance serves it] (partner_list_served's rule,
    for one row)."""
    if not PARTNER_CODE.fullmatch(code) or (settings.POSTBACK_PARTNERS and code not in settings.POSTBACK_PARTNERS):
        return []  # no query for what cannot be a partner code (a NUL byte would fail it)
    return list(Partner.objects.filter(is_active=True, partner_code=code)[:1])


# The message names this many failing databases at most (`failing` lists them all).
FAILING_NAMED = 10


def _failing_message(failing: list[str]) -> str:
    named = ", ".join(failing[:FAILING_NAMED])
    more = f" and {len(failing) - FAILING_NAMED} more" if len(failing) > FAILING_NAMED else ""
    return f"Unreachable or not provisioned: {named}{more}"


class InfoView(APIView):
    """`GET /info`: version and the partners this instance serves (no secrets).

    Without a usable configuration database it still answers, 503 with the version and
    what is wrong, never a 500.
    """

    authentication_classes = ()
    permission_classes = ()

    @extend_schema(
        operation_id="info", responses={200: OpenApiTypes.OBJECT, 503: OpenApiTypes.OBJECT}, tags=["service"]
    )
    def get(self, request: Request) -> Response:
        body: dict = {"service": "postback", "version": settings.VERSION}
        try:
            partners = partner_list_served()
        except DatabaseError:
            return _unavailable({**body, "partners": []}, f"configuration database {configuration_database_state()}")
        body["partners"] = [
            {
                "code": partner.partner_code,
                "name": partner.partner_name,
                "endpoint": partner.endpoint_path,
                "postback_url": request.build_absolute_uri(f"/partner{partner.endpoint_path}"),
                # Served exactly like postback_url (Partner.extra_paths).
                "also_accepted": [request.build_absolute_uri(path) for path in partner.extra_paths or []],
                "database": partner.database_name,
                "timezone": partner.timezone,
            }
            for partner in partners
        ]
        return Response(body)


# --- Error answers (handler400/403/404/500) ---------------------------------------
# Partners' servers and scripts read these, so outside the admin they are JSON like every
# other answer of the service; the admin keeps Django's HTML pages.
ADMIN_PATH_PREFIX = "/admin/"
SHOWN_PATH_LENGTH = 200


def _in_admin(request: HttpRequest) -> bool:
    return request.path.startswith(ADMIN_PATH_PREFIX)


def _error(message: str, *, status: int) -> JsonResponse:
    return JsonResponse(
        {"status": "error", "message": message}, status=status, json_dumps_params={"ensure_ascii": False}
    )


def _shown(text: str) -> str:
    return text if len(text) <= SHOWN_PATH_LENGTH else text[:SHOWN_PATH_LENGTH] + "..."


def bad_request(request: HttpRequest, exception: Exception) -> HttpResponse:
    """400: a Host this service does not answer to, or a request Django refused to read."""
    if _in_admin(request):
        return defaults.bad_request(request, exception)
    if isinstance(exception, DisallowedHost):
        host = _shown(request.META.get("HTTP_HOST", ""))
        return _error(f"Invalid Host header {host!r}: not a host name of this service", status=400)
    if isinstance(exception, BadRequest) and str(exception):
        return _error(str(exception), status=400)
    return _error("Bad request", status=400)


def permission_denied(request: HttpRequest, exception: Exception) -> HttpResponse:
    """403 outside the admin."""
    if _in_admin(request):
        return defaults.permission_denied(request, exception)
    return _error(str(exception) or "Forbidden", status=403)


def page_not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    """404 for a path no route serves (`//partner/...`, `/PARTNER/...`, `/partner/`)."""
    if _in_admin(request):
        return defaults.page_not_found(request, exception)
    return _error(f"Not found: {_shown(request.path)!r}. Postbacks go to /partner/<endpoint_path>.", status=404)


def server_error(request: HttpRequest) -> HttpResponse:
    """500 outside the admin; the traceback goes to the log, never to the client."""
    if _in_admin(request):
        return defaults.server_error(request)
    return _error("Internal server error", status=500)
