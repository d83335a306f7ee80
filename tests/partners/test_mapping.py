from datetime import UTC, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from conversions.models import PartnerConversion
from partners.mapping import CANONICAL_FIELDS, postback_map

INVOLVE_MAPPING = {
    "sub_id": "aff_sub",
    "usd_earning": "usd_payout",
    "conversion_datetime": "datetime_conversion",
}
SINGAPORE = ZoneInfo("Asia/Singapore")


def mapped(params, mapping=INVOLVE_MAPPING, tz=UTC):
    return postback_map(mapping=mapping, params={"conversion_id": "c1", **params}, tz=tz)


def test_partner_parameter_name_fills_our_field():
    result = mapped({"aff_sub": "s-1", "usd_payout": "4.67"})
    assert result.values["sub_id"] == "s-1"
    assert result.values["usd_earning"] == Decimal("4.67")
    assert result.sources == {"conversion_id": "conversion_id", "sub_id": "aff_sub", "usd_earning": "usd_payout"}


def test_our_own_name_is_accepted_when_the_partner_name_is_absent():
    result = mapped({"sub_id": "s-2", "usd_earning": "1.5"})
    assert result.values["sub_id"] == "s-2"
    assert result.values["usd_earning"] == Decimal("1.50")


def test_partner_name_wins_over_our_name_when_both_are_sent():
    result = mapped({"aff_sub": "partner", "sub_id": "ours"})
    assert result.values["sub_id"] == "partner"
    assert result.ignored == ["sub_id"]


def test_unmapped_parameters_are_reported_as_ignored():
    result = mapped({"order_id": "o-1", "aff_sub": "s"})
    assert result.ignored == ["order_id"]


def test_missing_conversion_id_names_both_spellings():
    result = postback_map(mapping={"conversion_id": "txn"}, params={}, tz=UTC)
    assert result.errors == {"conversion_id": "is required (send 'txn' or 'conversion_id')"}


def test_empty_conversion_id_is_an_error_and_empty_optional_values_are_absent():
    result = postback_map(mapping={}, params={"conversion_id": " ", "sub_id": ""}, tz=UTC)
    assert result.errors == {"conversion_id": "conversion_id: must not be empty"}
    assert "sub_id" not in result.values


def test_repeated_parameter_uses_the_last_value():
    assert mapped({"aff_sub": ["first", "last"]}).values["sub_id"] == "last"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("99.99", Decimal("99.99")),
        ("  7 ", Decimal("7.00")),
        ("0.125", Decimal("0.13")),  # half-up, not banker's rounding
        ("0.124", Decimal("0.12")),
        ("-2.345", Decimal("-2.35")),
        ("1e3", Decimal("1000.00")),
        ("9999999999999.99", Decimal("9999999999999.99")),
        (1.005, Decimal("1.01")),  # a JSON number, rounded from its decimal text
        (12, Decimal("12.00")),
    ],
)
def test_amounts_become_two_decimal_places(raw, expected):
    assert mapped({"usd_sale_amount": raw}).values["usd_sale_amount"] == expected


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("abc", "usd_sale_amount: 'abc' is not a number"),
        ("1,234.50", "usd_sale_amount: '1,234.50' is not a number"),
        ("$5", "usd_sale_amount: '$5' is not a number"),
        ("NaN", "usd_sale_amount: 'NaN' is not a finite number"),
        ("Infinity", "usd_sale_amount: 'Infinity' is not a finite number"),
        ("-inf", "usd_sale_amount: '-inf' is not a finite number"),
        ("10000000000000", "usd_sale_amount: '10000000000000' does not fit (largest is 9999999999999.99)"),
        ("9999999999999.995", "usd_sale_amount: '9999999999999.995' does not fit (largest is 9999999999999.99)"),
        ("1e999999", "usd_sale_amount: '1e999999' does not fit (largest is 9999999999999.99)"),
        (True, "usd_sale_amount: True is not a number"),
        ({"a": 1}, "usd_sale_amount: must be a single value, not a JSON object or list"),
    ],
)
def test_bad_amounts_are_rejected_with_the_reason(raw, message):
    result = mapped({"usd_sale_amount": raw})
    assert result.errors == {"usd_sale_amount": message}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2025-01-15", datetime(2025, 1, 15, tzinfo=UTC)),
        ("2025-01-15 13:45:10", datetime(2025, 1, 15, 13, 45, 10, tzinfo=UTC)),
        ("2025-01-15T13:45:10", datetime(2025, 1, 15, 13, 45, 10, tzinfo=UTC)),
        ("2025-01-15T13:45:10Z", datetime(2025, 1, 15, 13, 45, 10, tzinfo=UTC)),
        ("2025-01-15T13:45:10.250+08:00", datetime(2025, 1, 15, 5, 45, 10, 250000, tzinfo=UTC)),
        ("1736948710", datetime(2025, 1, 15, 13, 45, 10, tzinfo=UTC)),
        (1736948710, datetime(2025, 1, 15, 13, 45, 10, tzinfo=UTC)),
    ],
)
def test_datetime_formats(raw, expected):
    value = mapped({"datetime_conversion": raw}).values["conversion_datetime"]
    assert value == expected
    assert value.tzinfo is not None


def test_naive_datetime_is_read_in_the_partner_time_zone():
    value = mapped({"datetime_conversion": "2025-01-15 13:45:10"}, tz=SINGAPORE).values["conversion_datetime"]
    assert value == datetime(2025, 1, 15, 5, 45, 10, tzinfo=UTC)
    day = mapped({"datetime_conversion": "2025-01-15"}, tz=SINGAPORE).values["conversion_datetime"]
    assert day == datetime(2025, 1, 14, 16, 0, tzinfo=UTC)


def test_explicit_offset_is_not_shifted_by_the_partner_time_zone():
    value = mapped({"datetime_conversion": "2025-01-15T13:45:10Z"}, tz=SINGAPORE).values["conversion_datetime"]
    assert value == datetime(2025, 1, 15, 13, 45, 10, tzinfo=UTC)


@pytest.mark.parametrize("raw", ["yesterday", "2025-13-01", "2025-02-30 10:00:00", "15/01/2025", "1736948710123"])
def test_bad_datetimes_are_rejected(raw):
    error = mapped({"datetime_conversion": raw}).errors["conversion_datetime"]
    assert error.startswith(f"datetime_conversion: {raw!r} is not a date/time")


@pytest.mark.parametrize("raw", ["1900-01-01", "3000-01-01T00:00:00Z", "0001-01-01 00:00:00"])
def test_datetimes_out_of_range_are_rejected(raw):
    error = mapped({"datetime_conversion": raw}).errors["conversion_datetime"]
    assert error == f"datetime_conversion: {raw!r} is outside 1970-01-01..2999-12-31"


def test_value_longer_than_its_column_names_the_field_and_the_limit():
    result = mapped({"aff_sub": "x" * 256, "conversion_id": "c" * 51})
    assert result.errors == {
        "conversion_id": "conversion_id: is 51 characters long; the limit is 50",
        "sub_id": "aff_sub: is 256 characters long; the limit is 255",
    }


def test_text_values_must_be_storable():
    result = mapped({"aff_sub": "a\x00b", "offer_name": "bad \ud800 surrogate"})
    assert result.errors == {
        "sub_id": "aff_sub: contains a NUL character",
        "offer_name": "offer_name: is not valid Unicode text",
    }


def test_json_scalars_become_text():
    result = mapped({"offer_id": 1021, "aff_sub": True})
    assert result.values["offer_id"] == "1021"
    assert result.values["sub_id"] == "true"


def test_every_problem_is_reported_at_once():
    result = postback_map(mapping=INVOLVE_MAPPING, params={"usd_payout": "x", "datetime_conversion": "never"}, tz=UTC)
    assert set(result.errors) == {"conversion_id", "usd_earning", "conversion_datetime"}


@pytest.mark.parametrize("name", list(CANONICAL_FIELDS))
def test_canonical_fields_match_the_model_columns(name):
    column = PartnerConversion._meta.get_field(name)
    spec = CANONICAL_FIELDS[name]
    if spec.kind == "text" and column.get_internal_type() == "CharField":
        assert column.max_length == spec.max_length
    if spec.kind == "amount":
        assert (column.max_digits, column.decimal_places) == (15, 2)


def test_status_is_mapped_onto_ours_and_the_raw_value_kept():
    result = postback_map(
        mapping={"status": "st"},
        params={"conversion_id": "c", "st": "1"},
        tz=UTC,
        status_mapping={"1": "approved", "2": "pending", "Cancelled": "rejected"},
    )
    assert (result.values["status"], result.values["status_raw"]) == ("approved", "1")


def test_status_values_match_case_insensitively_and_our_names_always_work():
    mapping = {"CANCELLED": "rejected"}
    for raw, ours in [("cancelled", "rejected"), ("Approved", "approved"), ("PAID", "paid")]:
        result = postback_map(mapping={}, params={"conversion_id": "c", "status": raw}, tz=UTC, status_mapping=mapping)
        assert result.values["status"] == ours


def test_unknown_status_is_an_error_listing_the_known_values():
    result = postback_map(
        mapping={}, params={"conversion_id": "c", "status": "sale"}, tz=UTC, status_mapping={"lead": "pending"}
    )
    assert result.errors == {
        "status": "status: 'sale' is not a known status (known: approved, lead, paid, pending, rejected)"
    }


@pytest.mark.parametrize(("raw", "expected"), [("MYR", "MYR"), ("usd", "USD"), (" sgd ", "SGD")])
def test_currency_is_an_iso_4217_code(raw, expected):
    assert mapped({"currency": raw}).values["currency"] == expected


@pytest.mark.parametrize("raw", ["US$", "EURO", "ABC", "12"])
def test_non_iso_currency_is_rejected(raw):
    assert mapped({"currency": raw}).errors["currency"].endswith("is not an ISO 4217 currency code")


def test_local_amounts_are_amounts():
    result = mapped({"sale_amount_local": "415.805", "payout_local": "x"})
    assert result.values["sale_amount_local"] == Decimal("415.81")
    assert result.errors == {"payout_local": "payout_local: 'x' is not a number"}
