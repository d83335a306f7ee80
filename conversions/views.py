"""`GET|POST /partner/<endpoint_path>`: the postback endpoint, handed to the ingest pipeline."""

from typing import Any

from django.http import HttpRequest, HttpResponse
from django.views import View
from rest_framework.views import APIView

from conversions.ingest import postback_ingest
from conversions.ingest.respond import method_not_allowed_response
from conversions.openapi import postback_schema
from conversions.outcomes import Outcome
from infra.observability import postback_outcome_observe


@postback_schema
class PostbackView(APIView):
    """A partner reports one conversion (conversions/ingest/pipeline.py does the rest).

    An APIView so that the OpenAPI schema describes it, dispatched the plain Django way:
    a postback needs none of DRF's request wrapping, authentication, negotiation or
    rendering (it is always JSON, and its access checks are the partner's own).
    """

    http_method_names = ["get", "post"]

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        return View.dispatch(self, request, *args, **kwargs)

    def http_method_not_allowed(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        postback_outcome_observe(Outcome.METHOD_NOT_ALLOWED.label)
        return method_not_allowed_response(request.method)

    def get(self, request: HttpRequest, endpoint_path: str) -> HttpResponse:
        return postback_ingest(request, endpoint_path)

    def post(self, request: HttpRequest, endpoint_path: str) -> HttpResponse:
        return postback_ingest(request, endpoint_path)
