"""The OpenAPI description of the postback endpoint (conversions/views.py renders it by hand)."""

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import serializers

from partners.mapping import CANONICAL_FIELDS


def _canonical_serializer_field(name: str) -> serializers.Field:
    spec = CANONICAL_FIELDS[name]
    if spec.kind == "amount":
        return serializers.DecimalField(max_digits=15, decimal_places=2, allow_null=True)
    if spec.kind == "datetime":
        return serializers.DateTimeField(allow_null=True)
    return serializers.CharField(allow_null=True)


class PostbackConversionSerializer(serializers.Serializer):
    def get_fields(self) -> dict[str, serializers.Field]:
        fields: dict[str, serializers.Field] = {"id": serializers.IntegerField()}
        fields.update({name: _canonical_serializer_field(name) for name in CANONICAL_FIELDS})
        fields.update(
            is_processed=serializers.BooleanField(),
            is_duplicate=serializers.BooleanField(),
            duplicate_of=serializers.IntegerField(allow_null=True, help_text="The original's id, for a duplicate."),
            processing_error=serializers.CharField(allow_null=True),
            received_at=serializers.DateTimeField(),
        )
        return fields


class PostbackResultSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=("success", "duplicate", "error"))
    message = serializers.CharField()
    partner = serializers.DictField(child=serializers.CharField(), help_text="code, name, endpoint")
    conversion = PostbackConversionSerializer()
    processing_time_ms = serializers.FloatField()
    errors = serializers.DictField(
        child=serializers.CharField(), required=False, help_text="Field -> what is wrong (400 only)."
    )


class PostbackFailureSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=("error",))
    message = serializers.CharField()


def _postback_parameters() -> list[OpenApiParameter]:
    parameters = [
        OpenApiParameter(
            "endpoint_path",
            OpenApiTypes.STR,
            OpenApiParameter.PATH,
            description="The partner's endpoint path without the leading slash, e.g. `involve/event`.",
        )
    ]
    for name, spec in CANONICAL_FIELDS.items():
        kind = {
            "amount": "a number, rounded half-up to 2 decimals",
            "datetime": "YYYY-MM-DD, YYYY-MM-DD HH:MM:SS, "
            "ISO 8601 or Unix seconds; no offset = the partner's time zone",
        }.get(spec.kind, "text")
        limit = f", at most {spec.max_length} characters" if spec.max_length else ""
        parameters.append(
            OpenApiParameter(
                name,
                OpenApiTypes.STR,
                OpenApiParameter.QUERY,
                required=False,
                description=f"{'Required. ' if spec.required else ''}Our `{name}` ({kind}{limit}). The partner's own "
                "parameter name from its mapping is read first (e.g. InvolveAsia's `aff_sub` for `sub_id`); "
                "every parameter received is kept in raw_data.",
            )
        )
    return parameters


def _postback_operation(method: str) -> dict:
    responses = {
        200: OpenApiResponse(
            PostbackResultSerializer,
            description="`success`: stored as the original; `duplicate`: already recorded, stored as a duplicate "
            "(stop retrying).",
        ),
        400: OpenApiResponse(
            PostbackResultSerializer,
            description="`error`: invalid data, stored as rejected with the raw parameters; `errors` names each field.",
        ),
        404: OpenApiResponse(PostbackFailureSerializer, description="No active partner at that endpoint path."),
        503: OpenApiResponse(
            PostbackFailureSerializer,
            description="The partner's database is unavailable; nothing was stored. Retry after `Retry-After` seconds.",
        ),
    }
    operation = {
        "operation_id": f"postback_{method}",
        "summary": "A partner reports one conversion",
        "description": "Server-to-server postback. Parameters in the query string"
        + (", and/or a form-encoded or JSON-object body (merged with the query string)." if method == "post" else "."),
        "parameters": _postback_parameters(),
        "responses": responses,
        "auth": [],
        "tags": ["postback"],
    }
    if method == "post":
        operation["request"] = {
            "application/x-www-form-urlencoded": OpenApiTypes.OBJECT,
            "application/json": OpenApiTypes.OBJECT,
        }
    return operation


postback_schema = extend_schema_view(
    get=extend_schema(**_postback_operation("get")),
    post=extend_schema(**_postback_operation("post")),
)
