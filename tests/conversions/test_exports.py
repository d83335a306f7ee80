"""One CSV exporter for the API and the admin (an analyst uses both with one login): the
same bytes for the same rows, formulas neutralised in both, booleans and datetimes
spelled as the API documents, read in batches; the partner named on every row and the
ingest's request digests left out. The admin's XLSX has the same columns as typed cells."""

import csv
import io
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import connections
from django.test.utils import CaptureQueriesContext
from openpyxl import load_workbook

import conversions.exports
from conversions.models import PartnerConversion
from conversions.selectors import CONVERSION_COLUMNS

CONVERSIONS_API = "/partner/involve/event/conversions?format=csv"
ADMIN_LIST = "/admin/conversions/partnerconversion/?partner=involve_asia&rows=all"
EXPORTED = [
    "partner_code",
    "partner_name",
    *(name for name in CONVERSION_COLUMNS if name != "request_digests"),
    "outcome",
]
BASE = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
FORMULAS = ['=HYPERLINK("http://x.example/?"&A1,"Win")', "+1+1", "-2+3", "@SUM(A1:A9)", "\tpadded", "\rreturn"]


def add(partner, **fields) -> PartnerConversion:
    fields.setdefault("is_processed", not fields.get("is_duplicate") and not fields.get("processing_error"))
    return PartnerConversion.objects.using(partner.database_alias).create(partner_id=partner.pk, **fields)


def admin_export(client, action: str = "export_csv"):
    """The admin's action on every row of the list ("select all")."""
    return client.post(ADMIN_LIST, {"action": action, "select_across": "1", "index": "0", "_selected_action": ["1"]})


def body(response) -> bytes:
    assert response.status_code == 200, response.content[:300]
    assert response.streaming
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"] == 'attachment; filename="involve_asia-conversions.csv"'
    return b"".join(response.streaming_content)


def parsed(content: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(content.decode(), newline="")))


@pytest.fixture
def stored(involve):
    original = add(
        involve,
        conversion_id="IA-1",
        offer_name=FORMULAS[0],
        sub_id="+cmd|' /C calc'!A0",
        usd_sale_amount=Decimal("-5.00"),
        conversion_datetime=datetime(2025, 1, 15, 13, 45, 10, 500000, tzinfo=UTC),
        received_at=BASE,
        status="approved",
        currency="MYR",
        request_digests=["81ca0f3e9b2d4c17a6e5f0b1c2d3e4f5"],
    )
    add(
        involve, conversion_id="IA-1", is_duplicate=True, duplicate_of=original, received_at=BASE + timedelta(minutes=1)
    )
    add(involve, conversion_id="", processing_error="conversion_id: required", received_at=BASE + timedelta(minutes=2))
    for n, formula in enumerate(FORMULAS[1:]):
        add(involve, conversion_id=f"F-{n}", offer_name=formula, media_id="a=b", received_at=BASE + timedelta(hours=n))
    return original


def test_the_api_and_the_admin_export_the_same_bytes(analyst_client, stored):
    from_api = body(analyst_client.get(CONVERSIONS_API))
    from_admin = body(admin_export(analyst_client))
    assert from_admin == from_api
    rows = parsed(from_api)
    assert list(rows[0]) == EXPORTED
    assert "request_ip" not in rows[0] and "raw_data" not in rows[0]


def test_every_row_names_its_partner_and_the_request_digests_stay_out(analyst_client, stored, involve):
    content = body(admin_export(analyst_client))
    rows = parsed(content)
    assert {(row["partner_code"], row["partner_name"]) for row in rows} == {("involve_asia", involve.partner_name)}
    assert "request_digests" not in rows[0]
    assert b"81ca0f3e" not in content and b"['" not in content  # no Python list anywhere


@pytest.mark.parametrize("export", ["api", "admin"])
def test_cells_a_spreadsheet_would_run_are_neutralised_and_values_spelled_as_documented(analyst_client, stored, export):
    content = body(analyst_client.get(CONVERSIONS_API) if export == "api" else admin_export(analyst_client))
    rows = {(row["conversion_id"], row["outcome"]): row for row in parsed(content)}
    original = rows[("IA-1", "original")]
    assert original["offer_name"] == "'" + FORMULAS[0]
    assert original["sub_id"] == "'+cmd|' /C calc'!A0"
    assert original["usd_sale_amount"] == "-5.00"  # a number, not text: left as it is
    # ISO 8601 in UTC (PostgreSQL writes the fraction without trailing zeros, SQLite with them).
    assert original["conversion_datetime"].endswith("+00:00")
    assert datetime.fromisoformat(original["conversion_datetime"]) == datetime(
        2025, 1, 15, 13, 45, 10, 500000, tzinfo=UTC
    )
    assert datetime.fromisoformat(original["received_at"]) == BASE
    assert (original["is_duplicate"], original["is_processed"], original["offer_id"]) == ("false", "true", "")
    duplicate = rows[("IA-1", "duplicate")]
    assert (duplicate["is_duplicate"], duplicate["duplicate_of"]) == ("true", original["id"])
    assert rows[("", "rejected")]["processing_error"] == "conversion_id: required"
    for n, formula in enumerate(FORMULAS[1:]):
        row = rows[(f"F-{n}", "original")]
        assert row["offer_name"] == "'" + formula
        assert row["media_id"] == "a=b"


@pytest.mark.parametrize("export", ["api", "admin"])
def test_exports_read_in_keyset_batches(analyst_client, involve, monkeypatch, export):
    for n in range(23):
        add(involve, conversion_id=f"b{n}", received_at=BASE + timedelta(seconds=n // 4))
    monkeypatch.setattr(conversions.exports, "EXPORT_BATCH_SIZE", 5)
    with CaptureQueriesContext(connections[involve.database_alias]) as queries:
        content = body(analyst_client.get(CONVERSIONS_API) if export == "api" else admin_export(analyst_client))
    batches = [
        q["sql"] for q in queries.captured_queries if "partner_conversions" in q["sql"] and "LIMIT 5" in q["sql"]
    ]
    assert len(batches) == 5
    expected = list(
        PartnerConversion.objects.using(involve.database_alias)
        .order_by("-received_at", "-id")
        .values_list("id", flat=True)
    )
    assert [int(row["id"]) for row in parsed(content)] == expected


def test_the_admin_exports_only_the_selected_rows(analyst_client, stored):
    response = analyst_client.post(
        ADMIN_LIST, {"action": "export_csv", "index": "0", "_selected_action": [str(stored.pk)]}
    )
    (row,) = parsed(body(response))
    assert (row["id"], row["offer_name"]) == (str(stored.pk), "'" + FORMULAS[0])


def xlsx_rows(response) -> list[list]:
    assert response.status_code == 200, response.content[:300]
    assert response["Content-Type"] == conversions.exports.XLSX_TYPE
    assert response["Content-Disposition"] == 'attachment; filename="involve_asia-conversions.xlsx"'
    sheet = load_workbook(io.BytesIO(b"".join(response.streaming_content))).active
    return [[cell for cell in row] for row in sheet.iter_rows()]


def test_the_xlsx_export_has_the_csvs_columns_as_typed_cells_without_the_csv_guard(analyst_client, stored, involve):
    add(involve, conversion_id="CTRL-1", sub_id="bell\x07here", usd_sale_amount=Decimal("1234567.89"), received_at=BASE)
    header, *cells = xlsx_rows(admin_export(analyst_client, "export_xlsx"))
    assert [cell.value for cell in header] == EXPORTED
    rows = {(row[EXPORTED.index("conversion_id")].value, row[EXPORTED.index("outcome")].value): row for row in cells}
    assert len(rows) == len(cells) == len(parsed(body(admin_export(analyst_client))))

    def cell(key, column):
        return rows[key][EXPORTED.index(column)]

    original = ("IA-1", "original")
    # Text is a string cell, exactly as sent: a sheet never runs it, so no `'` in front.
    assert (cell(original, "offer_name").value, cell(original, "offer_name").data_type) == (FORMULAS[0], "s")
    assert cell(original, "sub_id").value == "+cmd|' /C calc'!A0"
    for n, formula in enumerate(FORMULAS[1:]):
        offer_name = cell((f"F-{n}", "original"), "offer_name")
        # (XML reads a carriage return back as a line feed.)
        assert (offer_name.value.replace("\n", "\r"), offer_name.data_type) == (formula, "s")
    # Numbers are numbers, datetimes datetimes (UTC), booleans booleans.
    assert (cell(original, "usd_sale_amount").value, cell(original, "usd_sale_amount").data_type) == (-5, "n")
    assert cell(("CTRL-1", "original"), "usd_sale_amount").value == 1234567.89
    assert cell(original, "id").data_type == "n" and cell(original, "id").value == stored.pk
    assert cell(original, "conversion_datetime").value == datetime(2025, 1, 15, 13, 45, 10, 500000)
    assert cell(original, "received_at").is_date and cell(original, "received_at").value == BASE.replace(tzinfo=None)
    assert cell(original, "is_duplicate").value is False
    assert cell(original, "partner_code").value == "involve_asia"
    assert cell(original, "partner_name").value == involve.partner_name
    assert cell((None, "rejected"), "processing_error").value == "conversion_id: required"  # an empty cell
    assert cell(("CTRL-1", "original"), "sub_id").value == "bell\ufffdhere"  # XML cannot carry a BEL


def test_an_xlsx_export_bigger_than_a_sheet_is_refused_with_a_message(analyst_client, stored, monkeypatch):
    monkeypatch.setattr(conversions.exports, "XLSX_MAX_ROWS", 3)
    response = admin_export(analyst_client, "export_xlsx")
    assert response.status_code == 302
    shown = analyst_client.get(response.url).content.decode()
    assert re.search(r"Not exported: more than 3 rows: a sheet cannot hold them, export them as CSV", shown)
    selected = analyst_client.post(
        ADMIN_LIST, {"action": "export_xlsx", "index": "0", "_selected_action": [str(stored.pk)]}
    )
    (row,) = xlsx_rows(selected)[1:]
    assert row[EXPORTED.index("id")].value == stored.pk
