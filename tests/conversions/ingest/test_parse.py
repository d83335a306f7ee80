"""Parse: bodies in other charsets, unreadable ones and numbers out of range are 400s with
a rejected row keeping what arrived, never a 500 or a 503. (A charset that is no text
encoding fails in Django before any view: tests/e2e/test_malformed_requests.py.)"""

import base64
import json

import pytest
from django.db import DataError

from conversions.ingest.parse import postback_from_payload
from tests.conftest import partner_rows

ENDPOINT = "/partner/involve/event"


@pytest.mark.parametrize("charset", ["iso-8859-1", "utf-16"])
def test_a_form_in_its_declared_charset_is_read_in_it(client, involve, charset):
    data = "conversion_id=é-1&aff_sub=café"  # the test client sends it in `charset`
    response = client.post(ENDPOINT, data=data, content_type=f"application/x-www-form-urlencoded; charset={charset}")
    assert response.status_code == 200, response.content
    row = partner_rows(involve).get()
    assert (row.conversion_id, row.sub_id) == ("é-1", "café")


def test_a_form_whose_bytes_are_not_its_charset_is_rejected_with_its_bytes(client, involve):
    data = "conversion_id=é-2".encode("latin-1")  # sent as UTF-8 (no charset): 0xE9 is not UTF-8
    response = client.post(f"{ENDPOINT}?conversion_id=b2", data=data, content_type="application/x-www-form-urlencoded")
    assert response.status_code == 400
    assert response.json()["errors"]["body"] == "is not valid utf-8 text"
    row = partner_rows(involve).get()
    assert base64.b64decode(row.raw_data["_raw_body_base64"]) == data
    assert row.conversion_id == "b2"


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ('{"conversion_id": "j1", "usd_payout": 1e999}', "has the number 1e999, which is out of range"),
        ('{"conversion_id": 1e400}', "has the number 1e400, which is out of range"),
        ('{"conversion_id": "j1", "usd_payout": -Infinity}', "is not valid JSON"),
    ],
)
def test_json_numbers_no_database_can_hold_are_400_and_kept(client, involve, document, message):
    response = client.post(ENDPOINT, data=document, content_type="application/json")
    assert response.status_code == 400
    assert response.json()["errors"]["body"] == message
    assert partner_rows(involve).get().raw_data["_raw_body"] == document


def test_a_rejected_postback_keeps_its_body_as_received(client, involve):
    response = client.post(ENDPOINT, data="aff_sub=x&usd_payout=1", content_type="application/x-www-form-urlencoded")
    assert response.status_code == 400  # no conversion_id
    row = partner_rows(involve).get()
    assert row.raw_data["aff_sub"] == "x" and row.raw_data["_raw_body"] == "aff_sub=x&usd_payout=1"


def test_a_value_the_database_refuses_is_a_400_with_a_rejected_row_not_a_503(client, involve, monkeypatch):
    import conversions.ingest.store as store

    def refuse(**kwargs):
        raise DataError("value out of range")

    monkeypatch.setattr(store, "original_insert", refuse)
    response = client.get(f"{ENDPOINT}?conversion_id=d1&usd_payout=1")
    assert response.status_code == 400
    assert response.json()["errors"] == {"postback": "cannot be stored: value out of range"}
    row = partner_rows(involve).get()
    assert row.processing_error == "postback: cannot be stored: value out of range"
    assert row.raw_data == {"conversion_id": "d1", "usd_payout": "1"}


def test_a_pasted_postback_is_parsed_as_a_request_carrying_it():
    as_url = postback_from_payload("https://x.example/partner/involve/event?conversion_id=p1&a=1&a=2")
    assert as_url.params == {"conversion_id": "p1", "a": ["1", "2"]}
    as_json = postback_from_payload(json.dumps({"conversion_id": "p2", "n": 1.5}))
    assert (as_json.method, as_json.params, as_json.errors) == ("POST", {"conversion_id": "p2", "n": 1.5}, {})
    assert postback_from_payload("{1e999").errors == {"body": "is not valid JSON"}
