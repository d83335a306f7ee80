"""Service-level endpoints: health and info."""

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, DatabaseError
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from partners.databases import database_ping, partner_database_ping
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
                checks[partner.database_name] = partner_database_ping(partner) or "ok"
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
