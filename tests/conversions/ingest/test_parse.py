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


def _outcome(function, *args, **kwargs):
    try:
        return function(*args, **kwargs)
    except ValueError as exc:  # UnicodeDecodeError included
        return type(exc)


@pytest.mark.parametrize("errors", ["replace", "strict"])
def test_query_pairs_are_parse_qsls_for_any_text(errors):
    """The query string's own parser against the standard library's, on 20,000 random
    texts made of what changes parsing: separators, escapes good and broken, '+', non-ASCII."""
    import random
    from urllib.parse import parse_qsl

    from conversions.ingest.parse import query_pairs

    pieces = ["&", "=", "+", "%", "%2", "%41", "%e9", "%C3%A9", "%ZZ", "a", "b", "é", " ", ";", "&&", "=="]
    generator = random.Random(16)
    for _ in range(20_000):
        text = "".join(generator.choices(pieces, k=generator.randint(0, 12)))
        for encoding in ("utf-8", "iso-8859-1"):
            for limit in (None, 3):
                options = {"encoding": encoding, "errors": errors, "max_num_fields": limit}
                expected = _outcome(parse_qsl, text, keep_blank_values=True, **options)
                assert _outcome(query_pairs, text, **options) == expected, (text, options)


def _reference_storable_json(value):
    """storable_json as first written (one call per value), what its flat-dict path must equal."""
    import math

    if isinstance(value, str):
        value = value.replace("\x00", "\ufffd")
        return "".join("\ufffd" if "\ud800" <= char <= "\udfff" else char for char in value)
    if isinstance(value, dict):
        return {_reference_storable_json(key): _reference_storable_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_reference_storable_json(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _reference_secret_masked(value, *, secret):
    if isinstance(value, str):
        return value.replace(secret, "****") if secret and secret in value else value
    if isinstance(value, dict):
        return {
            _reference_secret_masked(key, secret=secret): "****"
            if isinstance(key, str) and key.lower() == "token"
            else _reference_secret_masked(item, secret=secret)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_reference_secret_masked(item, secret=secret) for item in value]
    return value


def test_storing_and_masking_keep_their_meaning_on_any_parameters():
    import random

    from conversions.ingest.parse import storable_json
    from infra.masking import secret_masked

    texts = ["a", "é", "\x00", "\ud800", "s3cret", "Token", "token", "TOKEN", "x-s3cret-y", "", "1"]
    scalars = [None, True, 3, 2.5, float("inf"), float("nan")]
    generator = random.Random(16)

    def value(depth: int):
        roll = generator.random()
        if depth < 2 and roll < 0.15:
            return {"".join(generator.choices(texts, k=2)): value(depth + 1) for _ in range(generator.randint(0, 3))}
        if depth < 2 and roll < 0.25:
            return [value(depth + 1) for _ in range(generator.randint(0, 3))]
        if roll < 0.35:
            return generator.choice(scalars)
        return "".join(generator.choices(texts, k=generator.randint(0, 3)))

    for _ in range(5_000):
        params = {"".join(generator.choices(texts, k=generator.randint(1, 2))): value(0) for _ in range(4)}
        if generator.random() < 0.1:
            params[7] = "a non-text key"
        for secret in ("", "s3cret"):
            masked = secret_masked(params, secret=secret)
            assert repr(masked) == repr(_reference_secret_masked(params, secret=secret)), params
            assert repr(storable_json(masked)) == repr(_reference_storable_json(masked)), masked


def test_a_token_parameter_is_masked_whatever_string_type_its_name_is():
    from infra.masking import secret_masked

    class Name(str):
        pass

    assert secret_masked({Name("Token"): "s3cret-value", "a": "x"}, secret="") == {"Token": "****", "a": "x"}
