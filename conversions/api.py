"""The read API of a partner: `/partner/<endpoint_path>/conversions` and `/stats`.

Both expose revenue, so both need an authenticated user (API token or admin session)
holding the `conversions.view_partnerconversion` permission, or, on the embedded default
only, a request from the machine itself (conversions/api_auth.py). Errors are JSON.
"""

import logging
from typing import Any

from django.conf import settings
from django.db import DatabaseError
from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.exceptions import AuthenticationFailed, NotAuthenticated, NotFound
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.permissions import BasePermission
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from conversions.api_auth import READ_AUTHENTICATION, TOKEN_HELP, VIEW_PERMISSION
from conversions.exports import conversion_csv_response
from conversions.selectors import conversion_list, conversion_queryset, conversion_stats, conversion_totals
from conversions.serializers import (
    ConversionPageSerializer,
    ConversionQuerySerializer,
    ErrorSerializer,
    StatsQuerySerializer,
    StatsSerializer,
)
from infra.databases import PartnerDatabaseUnavailable
from partners.models import Partner
from partners.selectors import partner_get_by_endpoint, partner_is_visible_to

logger = logging.getLogger("conversions.api")


class CanViewConversions(BasePermission):
    """Model permission `view` on conversions (superusers have it implicitly)."""

    message = f"You do not have the permission to view conversions ({VIEW_PERMISSION})."

    def has_permission(self, request: Request, view: APIView) -> bool:
        # Unauthenticated requests fail here too; DRF then answers 401 with the
        # token scheme's WWW-Authenticate, because TokenAuthentication comes first.
        user = request.user
        return bool(user and user.is_authenticated and user.has_perm(VIEW_PERMISSION))


class JSONOnlyNegotiation(BaseContentNegotiation):
    """Always JSON: `?format=csv` is ours to handle, and errors are never HTML or CSV."""

    def select_parser(self, request, parsers):
        return parsers[0] if parsers else None

    def select_renderer(self, request, renderers, format_suffix=None):
        return JSONRenderer(), JSONRenderer.media_type


COMMON_ERRORS = {
    400: OpenApiResponse(ErrorSerializer, description="A query parameter is invalid; `errors` names it."),
    401: OpenApiResponse(ErrorSerializer, description="No credentials, or an invalid token."),
    403: OpenApiResponse(ErrorSerializer, description=f"The user lacks `{VIEW_PERMISSION}`."),
    404: OpenApiResponse(ErrorSerializer, description="No active partner at that endpoint path."),
    503: OpenApiResponse(ErrorSerializer, description="The partner's database is unavailable; retry later."),
}
ENDPOINT_PATH_PARAMETER = OpenApiParameter(
    "endpoint_path",
    OpenApiTypes.STR,
    OpenApiParameter.PATH,
    description="The partner's endpoint path without the leading slash, e.g. `involve/event`.",
)


class PartnerReadView(APIView):
    """Shared behaviour: permission, partner lookup, query validation, JSON errors."""

    authentication_classes = READ_AUTHENTICATION
    permission_classes = (CanViewConversions,)
    content_negotiation_class = JSONOnlyNegotiation
    renderer_classes = (JSONRenderer,)
    query_serializer_class: type

    def partner(self, endpoint_path: str) -> Partner:
        """The active partner at `endpoint_path`, if the user may see it (else 404, as if there were none)."""
        partner = partner_get_by_endpoint(endpoint_path)
        if partner is None or not partner_is_visible_to(self.request.user, partner):
            raise NotFound(f"No active partner at endpoint '/{endpoint_path.strip('/')}'.")
        return partner

    def query(self, request: Request) -> tuple[dict[str, Any] | None, Response | None]:
        serializer = self.query_serializer_class(data=request.query_params.dict())
        if serializer.is_valid():
            return serializer.validated_data, None
        errors = serializer.errors
        body = {"detail": f"Invalid query parameter(s): {', '.join(errors)}.", "errors": errors}
        return None, Response(body, status=400)

    def handle_exception(self, exc: Exception) -> Response:
        if isinstance(exc, (DatabaseError, PartnerDatabaseUnavailable)):
            logger.error("read API: database unavailable: %s", exc)
            return Response(
                {"detail": "The partner's database is unavailable; retry later."},
                status=503,
                headers={"Retry-After": str(settings.POSTBACK_RETRY_AFTER)},
            )
        response = super().handle_exception(exc)
        if isinstance(exc, (NotAuthenticated, AuthenticationFailed)):
            response.data = {"detail": f"{exc.detail} {TOKEN_HELP}"}
        return response


class ConversionListView(PartnerReadView):
    """`GET /partner/<endpoint_path>/conversions`: newest first, keyset-paginated, or CSV."""

    query_serializer_class = ConversionQuerySerializer

    @extend_schema(
        operation_id="partner_conversions",
        summary="List a partner's conversions",
        description=(
            "Newest first (by received time, then id). Follow `next` for the following page: it keeps "
            "working while new postbacks arrive (they are above the cursor). `format=csv` streams every "
            "matching row as CSV with the same columns."
        ),
        parameters=[ENDPOINT_PATH_PARAMETER, ConversionQuerySerializer],
        responses={
            (200, "application/json"): ConversionPageSerializer,
            (200, "text/csv"): OpenApiResponse(OpenApiTypes.STR, description="format=csv: one header row, then rows"),
            **COMMON_ERRORS,
        },
        tags=["conversions"],
    )
    def get(self, request: Request, endpoint_path: str) -> Response | StreamingHttpResponse:
        partner = self.partner(endpoint_path)
        params, error = self.query(request)
        if error is not None:
            return error
        if params["format"] == "csv":
            queryset = conversion_queryset(partner=partner, filters=params["filters"])
            return conversion_csv_response(
                queryset, partner=partner, after=params.get("cursor"), limit=params.get("limit")
            )
        page = conversion_list(
            partner=partner, filters=params["filters"], limit=params["limit"], after=params.get("cursor")
        )
        next_url = None
        if page.next_cursor is not None:
            query = request.query_params.copy()
            query["cursor"] = page.next_cursor.encode()
            next_url = request.build_absolute_uri(f"{request.path}?{query.urlencode()}")
        body = {"partner": partner, "limit": params["limit"], "next": next_url, "results": page.rows}
        return Response(ConversionPageSerializer(body).data)


class ConversionStatsView(PartnerReadView):
    """`GET /partner/<endpoint_path>/stats`: totals, a per-day series and the top offers."""

    query_serializer_class = StatsQuerySerializer

    @extend_schema(
        operation_id="partner_stats",
        summary="A partner's conversion stats for a date range",
        description=(
            "Counts of originals, duplicates and rejected postbacks; sums of `usd_sale_amount` and "
            "`usd_earning` over originals; one entry per UTC day; the top offers. Default range: the last "
            "30 days (today included). Computed in the partner's database."
        ),
        parameters=[ENDPOINT_PATH_PARAMETER, StatsQuerySerializer],
        responses={200: StatsSerializer, **COMMON_ERRORS},
        tags=["conversions"],
    )
    def get(self, request: Request, endpoint_path: str) -> Response:
        partner = self.partner(endpoint_path)
        params, error = self.query(request)
        if error is not None:
            return error
        stats = conversion_stats(partner=partner, time_range=params["time_range"], top=params["top"])
        body: dict[str, Any] = {"partner": partner, "stats": stats}
        if params["compare"]:
            previous = params["time_range"].previous()
            totals = conversion_totals(partner=partner, time_range=previous)
            body["previous"] = {"time_range": previous, "totals": totals}
        return Response(StatsSerializer(body).data)
