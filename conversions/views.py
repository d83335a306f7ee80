"""`GET|POST /partner/<endpoint_path>`, and a partner's extra paths at the root: the
postback endpoint, handed to the ingest pipeline."""

from typing import Any

from django.db import DatabaseError
from django.http import Http404, HttpRequest, HttpResponse
from django.views import View
from rest_framework.views import APIView

from conversions.ingest import postback_ingest
from conversions.ingest.respond import method_not_allowed_response
from conversions.openapi import extra_path_postback_schema, postback_schema
from conversions.outcomes import Outcome
from infra.observability import postback_outcome_observe
from partners.models import EXTRA_PATH_MAX_LENGTH
from partners.selectors import partner_get_by_extra_path


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


@extra_path_postback_schema
class ExtraPathPostbackView(PostbackView):
    """`GET|POST /<path>`: a partner's extra path (Partner.extra_paths), served exactly like
    its /partner/ endpoint. A path no partner has is the site's plain 404, whatever the method,
    and is not counted as a postback."""

    def dispatch(self, request: HttpRequest, *args: Any, path: str, **kwargs: Any) -> HttpResponse:
        if len(path.strip("/")) > EXTRA_PATH_MAX_LENGTH:
            raise Http404(path[:40])  # no partner has it: not worth a look in the directory
        try:
            known = partner_get_by_extra_path(path) is not None
        except DatabaseError:
            known = True  # the pipeline answers it: 503, the configuration database is unavailable
        if not known:
            raise Http404(path)
        return super().dispatch(request, *args, endpoint_path=path, **kwargs)

    def get(self, request: HttpRequest, endpoint_path: str) -> HttpResponse:
        return postback_ingest(request, endpoint_path, extra_path=True)

    def post(self, request: HttpRequest, endpoint_path: str) -> HttpResponse:
        return postback_ingest(request, endpoint_path, extra_path=True)
