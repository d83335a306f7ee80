"""The OpenAPI description of the postback endpoint, its responses made from the outcome
table (conversions/outcomes.py) the pipeline answers with."""

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    PolymorphicProxySerializer,
    extend_schema,
    extend_schema_view,
)
from rest_framework import serializers

from conversions.ingest.refusals import REASONS
from conversions.outcomes import Outcome
from partners.mapping import CANONICAL_FIELDS

STORED_ANSWERS = sorted({outcome.answer for outcome in Outcome if outcome.http_status in (200, 400)})


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
            status_raw=serializers.CharField(allow_null=True, help_text="The status as the partner sent it."),
            is_processed=serializers.BooleanField(help_text="True for the original of its conversion_id."),
            is_duplicate=serializers.BooleanField(),
            duplicate_of=serializers.IntegerField(allow_null=True, help_text="The original's id, for a duplicate."),
            processing_error=serializers.CharField(allow_null=True),
            received_at=serializers.DateTimeField(),
        )
        return fields


class PostbackResultSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=STORED_ANSWERS)
    message = serializers.CharField()
    partner = serializers.DictField(child=serializers.CharField(), help_text="code, name, endpoint")
    conversion = PostbackConversionSerializer()
    processing_time_ms = serializers.FloatField()
    errors = serializers.DictField(
        child=serializers.CharField(), required=False, help_text="Field -> what is wrong (400 only)."
    )
    changes = serializers.DictField(
        child=serializers.ListField(child=serializers.CharField(allow_null=True)),
        required=False,
        help_text="`updated` (and a stale `duplicate`): field -> [before, after].",
    )
    note = serializers.CharField(
        required=False, help_text="Why a `duplicate` changed nothing (a stale change, a replay)."
    )


class PostbackFailureSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=("error",))
    message = serializers.CharField()


class PostbackRefusalSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=("error",))
    reason = serializers.ChoiceField(choices=sorted(REASONS), help_text="Why it was refused (400, 403, 413, 429).")
    message = serializers.CharField()
    partner = serializers.DictField(child=serializers.CharField(), help_text="code, name, endpoint")
    errors = serializers.DictField(child=serializers.CharField(), required=False, help_text="What broke a limit.")


def postback_responses() -> dict[int, OpenApiResponse]:
    """One response per HTTP status the postback answers with, described by its outcomes."""
    by_status: dict[int, list[Outcome]] = {}
    for outcome in Outcome:
        by_status.setdefault(outcome.http_status, []).append(outcome)
    responses = {}
    for status, outcomes in sorted(by_status.items()):
        description = " ".join(
            f"**{outcome.answer}** ({outcome.name.lower()}): {outcome.description}" for outcome in outcomes
        )
        shapes = []
        if any(outcome.http_status == 200 or outcome.stored is not None for outcome in outcomes):
            shapes.append(PostbackResultSerializer)
        if any(outcome.name in REFUSAL_OUTCOMES for outcome in outcomes):
            shapes.append(PostbackRefusalSerializer)
        if not shapes:
            shapes.append(PostbackFailureSerializer)
        serializer = (
            shapes[0]
            if len(shapes) == 1
            else PolymorphicProxySerializer(
                component_name=f"Postback{status}", serializers=shapes, resource_type_field_name=None
            )
        )
        responses[status] = OpenApiResponse(serializer, description=description)
    return responses


# Outcomes answered with a Refusal (`reason`; refusals.py): the limits, access and quota.
REFUSAL_OUTCOMES = frozenset({"REFUSED", "FORBIDDEN", "TOO_LARGE", "RATE_LIMITED"})


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
    responses = postback_responses()
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


def _extra_path_operation(method: str) -> dict:
    operation = _postback_operation(method)
    parameters = [
        OpenApiParameter(
            "path",
            OpenApiTypes.STR,
            OpenApiParameter.PATH,
            description="One of a partner's extra paths without the leading slash, e.g. `involve/event` "
            "(never under /partner, /admin, /api, /static, /health, /info or /metrics). Any other path is a 404.",
        ),
        *operation["parameters"][1:],
    ]
    return {
        **operation,
        "operation_id": f"postback_extra_path_{method}",
        "summary": "A partner reports one conversion at one of its extra paths",
        "description": "Exactly as `/partner/{endpoint_path}`, at a path the partner's account manager added "
        "(the addresses its network was given before). " + operation["description"],
        "parameters": parameters,
    }


extra_path_postback_schema = extend_schema_view(
    get=extend_schema(**_extra_path_operation("get")),
    post=extend_schema(**_extra_path_operation("post")),
)
