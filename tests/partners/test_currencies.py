"""The ISO 4217 list comes from a maintained source: new codes accepted, withdrawn ones refused."""

from datetime import date

import pytest

from partners.currencies import ISO_4217_CODES, ISO_4217_PUBLISHED
from partners.mapping import postback_map
from tests.conftest import partner_rows


def currency_error(code: str) -> str | None:
    return postback_map(mapping={}, params={"conversion_id": "c1", "currency": code}, tz=None).errors.get("currency")


def test_the_list_is_the_published_one_of_2026_or_later():
    assert date(2026, 1, 1) <= ISO_4217_PUBLISHED
    assert {"USD", "EUR", "MYR", "SGD", "IDR", "THB", "XXX"} <= ISO_4217_CODES


@pytest.mark.parametrize(
    "code",
    [
        "XCG",  # Caribbean guilder, Curaçao and Sint Maarten, since 2025-03-31
        "XAD",  # Arab Accounting Dinar, added in 2025
    ],
)
def test_codes_that_entered_the_list_are_accepted(code):
    assert code in ISO_4217_CODES
    assert currency_error(code.lower()) is None


# Withdrawal dates as ISO 4217 list three (historic denominations) gives them.
@pytest.mark.parametrize(
    ("code", "withdrawn"),
    [
        ("ANG", "2025-03"),
        ("BGN", "2026-01"),
        ("ZWL", "2024-09"),
        ("SLL", "2023-12"),
        ("HRK", "2023-01"),
        ("CUC", "2021-06"),
    ],
)
def test_withdrawn_codes_are_refused(code, withdrawn):
    assert code not in ISO_4217_CODES, f"{code} was withdrawn in {withdrawn}"
    assert currency_error(code) == f"currency: '{code}' is not an ISO 4217 currency code"


def test_a_postback_in_caribbean_guilders_is_stored_and_one_in_antillean_guilders_is_rejected(client, involve):
    accepted = client.get("/partner/involve/event?conversion_id=cw-1&sale_amount_local=17.90&conversion_currency=XCG")
    refused = client.get("/partner/involve/event?conversion_id=cw-2&sale_amount_local=17.90&conversion_currency=ANG")

    assert accepted.status_code == 200, accepted.content
    assert refused.status_code == 400
    assert "currency" in refused.json()["errors"]
    rows = {row.conversion_id: row for row in partner_rows(involve)}
    assert rows["cw-1"].currency == "XCG" and rows["cw-1"].processing_error is None
    assert rows["cw-2"].currency is None and "ANG" in rows["cw-2"].processing_error
