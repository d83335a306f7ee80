"""Input validation (query parameters) and output shapes of the conversions API."""

import re
from datetime import UTC, date, datetime, timedelta
from typing import Any

from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from conversions.models import PartnerConversion
from conversions.outcomes import RowKind
from conversions.selectors import (
    CONVERSION_COLUMNS,
    TEXT_FILTERS,
    TIME_FIELDS,
    ConversionFilters,
    Cursor,
    InvalidCursor,
    TimeRange,
)
from partners.lifecycle import STATUSES
from partners.mapping import DATETIME_MAX, DATETIME_MIN

DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
LIMIT_DEFAULT = 50
LIMIT_MAX = 1000
STATS_DEFAULT_DAYS = 30
STATS_MAX_DAYS = 366


@extend_schema_field(OpenApiTypes.STR)
class MomentField(serializers.Field):
    """A date (`YYYY-MM-DD`, a whole UTC day) or an ISO 8601 datetime (no offset = UTC)."""

    default_error_messages = {
        "invalid": "'{value}' is not a date (YYYY-MM-DD) or an ISO 8601 datetime (e.g. 2025-01-15T13:45:00Z).",
        "range": "'{value}' is outside 1970-01-01..2999-12-31.",
    }

    def to_internal_value(self, data: Any) -> date | datetime:
        text = str(data).strip()
        try:
            if DATE_RE.match(text):
                value: date | datetime = date.fromisoformat(text)
                moment = _range_start(value)
            else:
                value = moment = datetime.fromisoformat(text)
                if moment.tzinfo is None:
                    value = moment = moment.replace(tzinfo=UTC)
        except ValueError:
            self.fail("invalid", value=text[:60])
        if not DATETIME_MIN <= moment <= DATETIME_MAX:
            self.fail("range", value=text[:60])
        return value

    def to_representation(self, value: Any) -> str:
        return value.isoformat()


def _range_start(value: date | datetime | None) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime(value.year, value.month, value.day, tzinfo=UTC)


def _range_end(value: date | datetime | None) -> datetime | None:
    """`to` is inclusive: a date means up to the end of that day, a datetime up to that instant."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value + timedelta(microseconds=1)
    return datetime(value.year, value.month, value.day, tzinfo=UTC) + timedelta(days=1)


class QuerySerializer(serializers.Serializer):
    """Query parameters: unknown names are refused, so a typo never silently widens a filter."""

    def to_internal_value(self, data: Any) -> Any:
        unknown = sorted(set(data) - set(self.fields))
        if unknown:
            raise serializers.ValidationError(
                {name: [f"is not a parameter here; use {', '.join(self.fields)}."] for name in unknown}
            )
        return super().to_internal_value(data)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        start, end = _range_start(attrs.get("from")), _range_end(attrs.get("to"))
        if start is not None and end is not None and start >= end:
            raise serializers.ValidationError({"to": ["must be later than 'from'."]})
        attrs["time_range"] = TimeRange(time_field=attrs.get("time_field", "received_at"), start=start, end=end)
        return attrs


def _time_fields() -> dict[str, serializers.Field]:
    return {
        "from": MomentField(required=False, help_text="Start, inclusive: a date (UTC day) or an ISO 8601 datetime."),
        "to": MomentField(
            required=False, help_text="End, inclusive: a date (the whole UTC day) or an ISO 8601 datetime."
        ),
        "time_field": serializers.ChoiceField(
            choices=TIME_FIELDS,
            default="received_at",
            help_text="Which time `from`/`to` apply to: when we received the postback (default) "
            "or the conversion time the partner sent.",
        ),
    }


class ConversionQuerySerializer(QuerySerializer):
    """`GET /partner/<endpoint_path>/conversions` parameters."""

    def get_fields(self) -> dict[str, serializers.Field]:
        fields = _time_fields()
        for name in TEXT_FILTERS:
            fields[name] = serializers.CharField(required=False, help_text=f"Exact `{name}`.")
        fields["status"] = serializers.ChoiceField(
            choices=STATUSES, required=False, help_text="Our status: " + ", ".join(STATUSES) + "."
        )
        fields["currency"] = serializers.RegexField(
            r"^[A-Za-z]{3}$", required=False, help_text="ISO 4217 code of the local amounts, e.g. MYR."
        )
        fields["is_duplicate"] = serializers.BooleanField(
            required=False, allow_null=True, default=None, help_text="`true`: only duplicates; `false`: none."
        )
        fields["has_error"] = serializers.BooleanField(
            required=False, allow_null=True, default=None, help_text="`true`: only rejected postbacks; `false`: none."
        )
        fields["limit"] = serializers.IntegerField(
            required=False,
            min_value=1,
            help_text=f"Rows per page (default {LIMIT_DEFAULT}, at most {LIMIT_MAX}); "
            "with format=csv, caps the export (default: every matching row).",
        )
        fields["cursor"] = serializers.CharField(
            required=False, help_text="Opaque position from a previous page's `next` link."
        )
        fields["format"] = serializers.ChoiceField(
            choices=("json", "csv"), default="json", help_text="`csv` streams every matching row as CSV."
        )
        return fields

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        attrs = super().validate(attrs)
        if attrs["format"] == "json":
            limit = attrs.setdefault("limit", LIMIT_DEFAULT)
            if limit > LIMIT_MAX:
                raise serializers.ValidationError({"limit": [f"must be at most {LIMIT_MAX} (got {limit})."]})
        if "cursor" in attrs:
            try:
                attrs["cursor"] = Cursor.decode(attrs["cursor"])
            except InvalidCursor as exc:
                raise serializers.ValidationError({"cursor": [str(exc)]}) from exc
        if "currency" in attrs:
            attrs["currency"] = attrs["currency"].upper()
        attrs["filters"] = ConversionFilters(
            time_range=attrs["time_range"],
            text={
                name: attrs[name].upper() if name == "currency" else attrs[name]
                for name in TEXT_FILTERS
                if name in attrs
            },
            is_duplicate=attrs.get("is_duplicate"),
            has_error=attrs.get("has_error"),
        )
        return attrs


class StatsQuerySerializer(QuerySerializer):
    """`GET /partner/<endpoint_path>/stats` parameters."""

    top = serializers.IntegerField(
        required=False, default=10, min_value=1, max_value=100, help_text="How many top offers (default 10)."
    )
    compare = serializers.BooleanField(
        required=False,
        default=False,
        help_text="`true`: also `previous`, the summary of the period of the same length just before.",
    )

    def get_fields(self) -> dict[str, serializers.Field]:
        return {**_time_fields(), **super().get_fields()}

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        attrs = super().validate(attrs)
        time_range: TimeRange = attrs["time_range"]
        end = time_range.end or timezone.now()
        start = time_range.start
        if start is None:
            start = datetime.combine(
                end.astimezone(UTC).date() - timedelta(days=STATS_DEFAULT_DAYS - 1), datetime.min.time(), UTC
            )
        elif start >= end:
            raise serializers.ValidationError({"from": ["must be earlier than 'to' (default: now)."]})
        if end - start > timedelta(days=STATS_MAX_DAYS):
            raise serializers.ValidationError({"to": [f"the range may span at most {STATS_MAX_DAYS} days."]})
        attrs["time_range"] = TimeRange(time_field=time_range.time_field, start=start, end=end)
        return attrs


class ConversionSerializer(serializers.ModelSerializer):
    """One stored conversion (a row of conversion_list). Columns come from the model, so
    new ones appear by themselves."""

    duplicate_of = serializers.IntegerField(
        source="duplicate_of_id", allow_null=True, read_only=True, help_text="The original's id, for a duplicate."
    )
    outcome = serializers.ChoiceField(choices=[kind.value for kind in RowKind], read_only=True)

    class Meta:
        model = PartnerConversion
        fields = (*CONVERSION_COLUMNS, "outcome")
        read_only_fields = fields


class PartnerSummarySerializer(serializers.Serializer):
    code = serializers.CharField(source="partner_code")
    name = serializers.CharField(source="partner_name")
    endpoint = serializers.CharField(source="endpoint_path")


class ConversionPageSerializer(serializers.Serializer):
    partner = PartnerSummarySerializer()
    limit = serializers.IntegerField()
    next = serializers.URLField(allow_null=True, help_text="The next page, or null on the last one.")
    results = ConversionSerializer(many=True)


class TotalsSerializer(serializers.Serializer):
    originals = serializers.IntegerField()
    duplicates = serializers.IntegerField()
    rejected = serializers.IntegerField()
    usd_sale_amount = serializers.DecimalField(max_digits=None, decimal_places=2, help_text="Sum over originals.")
    usd_earning = serializers.DecimalField(max_digits=None, decimal_places=2, help_text="Sum over originals.")


AMOUNT = {"max_digits": None, "decimal_places": 2}


class RevenueSerializer(serializers.Serializer):
    """Originals of one status class (docs/numbers.md) and their amounts in USD."""

    originals = serializers.IntegerField()
    usd_sale_amount = serializers.DecimalField(**AMOUNT)
    usd_earning = serializers.DecimalField(**AMOUNT)


class SummarySerializer(serializers.Serializer):
    """The headline numbers, as the dashboards show them (docs/numbers.md)."""

    originals = serializers.IntegerField()
    invalid = serializers.IntegerField(help_text="Invalid postbacks (`rejected` in `totals`).")
    approved = RevenueSerializer(help_text="Originals whose status is approved or paid.")
    pending = RevenueSerializer(help_text="Originals whose status is pending, or that carried none.")
    network_rejected = RevenueSerializer(help_text="Originals whose status is rejected: sales the network refused.")
    open_usd_sale_amount = serializers.DecimalField(**AMOUNT, help_text="Approved + pending sales.")
    open_usd_earning = serializers.DecimalField(**AMOUNT, help_text="Approved + pending earnings.")
    approval_rate = serializers.DecimalField(
        max_digits=None, decimal_places=4, allow_null=True, help_text="Approved originals / originals (null: none)."
    )
    rejection_rate = serializers.DecimalField(
        max_digits=None, decimal_places=4, allow_null=True, help_text="Rejected originals / originals (null: none)."
    )


class DayTotalsSerializer(TotalsSerializer):
    date = serializers.DateField(source="day")
    approved_usd_sale_amount = serializers.DecimalField(**AMOUNT, source="approved.usd_sale_amount")
    pending_usd_sale_amount = serializers.DecimalField(**AMOUNT, source="pending.usd_sale_amount")
    network_rejected_usd_sale_amount = serializers.DecimalField(**AMOUNT, source="network_rejected.usd_sale_amount")

    def get_fields(self) -> dict[str, serializers.Field]:
        fields = super().get_fields()
        return {"date": fields.pop("date"), **fields}


class OfferTotalsSerializer(TotalsSerializer):
    """An offer's originals and duplicates (a rejected postback is not credited to an offer)."""

    offer_id = serializers.CharField(allow_null=True)
    offer_name = serializers.CharField(allow_null=True, help_text="The latest name seen for this offer_id.")
    rejected = None

    def get_fields(self) -> dict[str, serializers.Field]:
        fields = super().get_fields()
        return {"offer_id": fields.pop("offer_id"), "offer_name": fields.pop("offer_name"), **fields}


class StatusTotalsSerializer(TotalsSerializer):
    """Accepted postbacks by our status (null: the partner sent none): approved revenue apart from pending."""

    status = serializers.CharField(allow_null=True)
    rejected = None

    def get_fields(self) -> dict[str, serializers.Field]:
        fields = super().get_fields()
        return {"status": fields.pop("status"), **fields}


class RangeSerializer(serializers.Serializer):
    time_field = serializers.CharField()
    start = serializers.DateTimeField(help_text="Inclusive.")
    end = serializers.DateTimeField(help_text="Exclusive.")


class PreviousSerializer(serializers.Serializer):
    range = RangeSerializer(source="time_range")
    summary = SummarySerializer(source="totals")


class StatsSerializer(serializers.Serializer):
    partner = PartnerSummarySerializer()
    range = RangeSerializer(source="stats.time_range")
    totals = TotalsSerializer(source="stats.totals")
    days = DayTotalsSerializer(source="stats.days", many=True, help_text="Every UTC day of the range.")
    top_offers = OfferTotalsSerializer(source="stats.top_offers", many=True, help_text="By originals, then sales.")
    by_status = StatusTotalsSerializer(
        source="stats.by_status", many=True, help_text="Originals and their amounts by status (pending, approved...)."
    )
    summary = SummarySerializer(source="stats.totals", help_text="Approved, pending and rejected apart, and rates.")
    previous = PreviousSerializer(required=False, help_text="With `compare=true`: the period just before.")


class ErrorSerializer(serializers.Serializer):
    detail = serializers.CharField()
    errors = serializers.DictField(
        child=serializers.ListField(child=serializers.CharField()),
        required=False,
        help_text="Parameter -> what is wrong with it (400 only).",
    )
