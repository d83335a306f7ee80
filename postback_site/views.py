"""Service-level endpoints: health and info; the JSON error answers outside the admin."""

from django.conf import settings
from django.core.exceptions import BadRequest, DisallowedHost
from django.db import DEFAULT_DB_ALIAS, DatabaseError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from partners.databases import database_ping, partner_database_register
from partners.selectors import partner_list_served


class HealthView(APIView):
    """`GET /health`: 200 when `default` and every served partner database answer."""

    authentication_classes = ()
    permission_classes = ()

    @extend_schema(
        operation_id="health", responses={200: OpenApiTypes.OBJECT, 503: OpenApiTypes.OBJECT}, tags=["service"]
    )
    def get(self, request: Request) -> Response:
        checks: dict[str, str] = {}
        failure = database_ping(DEFAULT_DB_ALIAS, "SELECT 1 FROM partners LIMIT 1")
        checks[DEFAULT_DB_ALIAS] = failure or "ok"
        if failure is None:
            try:
                partners = partner_list_served()
            except DatabaseError as exc:
                checks[DEFAULT_DB_ALIAS] = str(exc).strip() or "unavailable"
                partners = []
            for partner in partners:
                alias = partner_database_register(partner)
                checks[alias] = database_ping(alias, "SELECT 1 FROM partner_conversions LIMIT 1") or "ok"
        failing = sorted(alias for alias, state in checks.items() if state != "ok")
        body = {"status": "error" if failing else "ok", "databases": checks}
        if failing:
            body["failing"] = failing
            body["message"] = f"Unreachable or not provisioned: {', '.join(failing)}"
            return Response(body, status=503, headers={"Retry-After": str(settings.POSTBACK_RETRY_AFTER)})
        return Response(body)


class InfoView(APIView):
    """`GET /info`: version and the partners this instance serves (no secrets)."""

    authentication_classes = ()
    permission_classes = ()

    @extend_schema(operation_id="info", responses={200: OpenApiTypes.OBJECT}, tags=["service"])
    def get(self, request: Request) -> Response:
        partners = partner_list_served()
        return Response(
            {
                "service": "postback",
                "version": settings.VERSION,
                "partners": [
                    {
                        "code": partner.partner_code,
                        "name": partner.partner_name,
                        "endpoint": partner.endpoint_path,
                        "postback_url": request.build_absolute_uri(f"/partner{partner.endpoint_path}"),
                        "database": partner.database_name,
                        "timezone": partner.timezone,
                    }
                    for partner in partners
                ],
            }
        )


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
