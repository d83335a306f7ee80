"""CSV reports: BOM, semicolons, quoted fields; a malformed file names its line."""

import io

import pytest

from reconciliation.sources import ReportError, csv_report_rows


def rows(data: bytes) -> list[tuple[int, dict]]:
    return [(row.line, row.values) for row in csv_report_rows(io.BytesIO(data))]


def test_comma_separated_with_a_bom_and_quoted_commas():
    data = (
        '\ufeffconversion_id,offer_name,usd_payout\r\nIA-1,"Shopee MY, Mall",4.67\r\nIA-2,"He said ""hi""",1.00\r\n'
    ).encode()
    assert rows(data) == [
        (2, {"conversion_id": "IA-1", "offer_name": "Shopee MY, Mall", "usd_payout": "4.67"}),
        (3, {"conversion_id": "IA-2", "offer_name": 'He said "hi"', "usd_payout": "1.00"}),
    ]


def test_semicolon_separated_without_a_bom_with_a_line_break_in_a_quoted_field():
    data = b'conversion_id;offer_name;usd_payout\nIA-1;"Lazada; SG\nsecond line";4,50\n\nIA-2;Zalora;1\n'
    assert rows(data) == [
        (3, {"conversion_id": "IA-1", "offer_name": "Lazada; SG\nsecond line", "usd_payout": "4,50"}),
        (5, {"conversion_id": "IA-2", "offer_name": "Zalora", "usd_payout": "1"}),
    ]


def test_non_ascii_text_in_utf8():
    data = "conversion_id,offer_name\nIA-1,蝦皮 Shopee\n".encode()
    assert rows(data) == [(2, {"conversion_id": "IA-1", "offer_name": "蝦皮 Shopee"})]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "the file is empty"),
        (b"conversion_id,usd_payout\nIA-1,1\nIA-2,2,3\n", "line 3: 3 fields where the header has 2"),
        (b'conversion_id,offer_name\nIA-1,"unclosed\n', "line 2"),
        (b"conversion_id,offer_name\nIA-1,caf\xe9\n", "line 2: not UTF-8"),
        (b"conversion_id,,usd_payout\nIA-1,x,1\n", "line 1: column 2 has no name"),
        (b"conversion_id,conversion_id\nIA-1,x\n", "line 1: column 'conversion_id' appears twice"),
        (b"conversion_id,note\nIA-1,a\x00b\n", "line 2: contains a NUL character"),
    ],
)
def test_a_malformed_file_is_an_error_naming_the_line(data, message):
    with pytest.raises(ReportError) as error:
        rows(data)
    assert message in str(error.value)
