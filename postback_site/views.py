"""Service-level endpoints: health and info; the JSON error answers outside the admin."""

from django.conf import settings
from django.core.exceptions import BadRequest, DisallowedHost
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections
from django.db.migrations.executor import MigrationExecutor
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from infra.databases import NOT_INITIALISED, database_ping, migrations_to_apply, partner_database_state
from infra.state import process_state_register
from partners.selectors import partner_list_served

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


class HealthView(APIView):
    """`GET /health`: 200 when `default` and every served partner database can serve.

    503 otherwise, naming each database's problem: unreachable, not initialised or
    provisioned, or with migrations still to apply (each says to run init_partners).
    """

    authentication_classes = ()
    permission_classes = ()

    @extend_schema(
        operation_id="health", responses={200: OpenApiTypes.OBJECT, 503: OpenApiTypes.OBJECT}, tags=["service"]
    )
    def get(self, request: Request) -> Response:
        state = configuration_database_state()
        checks: dict[str, str] = {DEFAULT_DB_ALIAS: state}
        if state != "ok":
            return _unavailable({"databases": checks, "failing": [DEFAULT_DB_ALIAS]}, f"configuration database {state}")
        try:
            partners = partner_list_served()
        except DatabaseError as exc:
            checks[DEFAULT_DB_ALIAS] = f"unreachable: {str(exc).strip() or exc.__class__.__name__}"
            partners = []
        for partner in partners:
            checks[partner.database_name] = partner_database_state(partner)
        failing = sorted(alias for alias, state in checks.items() if state != "ok")
        if failing:
            return _unavailable(
                {"databases": checks, "failing": failing}, f"Unreachable or not provisioned: {', '.join(failing)}"
            )
        return Response({"status": "ok", "databases": checks})


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
