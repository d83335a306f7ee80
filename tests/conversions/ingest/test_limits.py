"""Request limits: body size (413), parameter count and lengths (400), methods (405)."""

import json

import pytest
from django.db import connections
from django.test.utils import CaptureQueriesContext

from tests.conftest import partner_rows

URL = "/partner/involve/event"


@pytest.fixture
def limits(settings):
    settings.POSTBACK_MAX_BODY_BYTES = 1000
    settings.POSTBACK_MAX_PARAMS = 10
    settings.POSTBACK_MAX_PARAM_NAME_LENGTH = 20
    settings.POSTBACK_MAX_PARAM_VALUE_LENGTH = 300
    return settings


def refused(client, partner, response, status, reason):
    """Assert the refusal; and that nothing touched partner_conversions."""
    assert response.status_code == status, response.content
    body = response.json()
    assert body["status"] == "error" and body["reason"] == reason
    assert not partner_rows(partner).exists()
    return body


def test_body_over_the_limit_is_413_before_any_conversion_work(client, involve, limits):
    body = "conversion_id=big&aff_sub=" + "x" * 1000
    with CaptureQueriesContext(connections[involve.database_alias]) as queries:
        response = client.post(URL, data=body, content_type="application/x-www-form-urlencoded")
    result = refused(client, involve, response, 413, "body_too_large")
    assert result["errors"]["body"] == f"is {len(body)} bytes; the limit is 1000 bytes"
    # no statement at all: even the refusal's audit count is added later, in a batch
    assert len(queries) == 0, [query["sql"] for query in queries]


def test_body_at_the_limit_passes(client, involve, limits):
    body = "conversion_id=ok&offer_name=" + "y" * (1000 - len("conversion_id=ok&offer_name=") - 1)
    body += "z"
    assert len(body) == 1000
    response = client.post(URL, data=body, content_type="application/x-www-form-urlencoded")
    assert response.status_code == 400  # offer_name fits the body, but not the 300-character value limit
    assert response.json()["reason"] == "parameter_value_too_long"
    body = "conversion_id=ok&offer_name=" + "y" * 300
    assert client.post(URL, data=body, content_type="application/x-www-form-urlencoded").status_code == 200


def test_too_many_parameters_is_400(client, involve, limits):
    query = "&".join(f"p{i}=v" for i in range(11))
    body = refused(client, involve, client.get(f"{URL}?conversion_id=c&{query}"), 400, "too_many_parameters")
    assert body["errors"] == {"parameters": "more than 10 parameters"}
    # a repeated parameter counts once per value
    refused(client, involve, client.get(f"{URL}?conversion_id=c&" + "&".join(["a=1"] * 10)), 400, "too_many_parameters")
    assert client.get(f"{URL}?conversion_id=c&" + "&".join(f"p{i}=v" for i in range(9))).status_code == 200


def test_thousands_of_form_fields_are_a_clean_400(client, involve):
    # more than Django's own DATA_UPLOAD_MAX_NUMBER_FIELDS: no HTML error page, our JSON 400
    body = "&".join(f"f{i}=1" for i in range(1500))
    response = client.post(URL, data=body, content_type="application/x-www-form-urlencoded")
    refused(client, involve, response, 400, "too_many_parameters")
    response = client.get(f"{URL}?" + "&".join("a" for _ in range(1500)))
    refused(client, involve, response, 400, "too_many_parameters")


def test_long_parameter_name_is_400(client, involve, limits):
    name = "n" * 21
    body = refused(client, involve, client.get(f"{URL}?conversion_id=c&{name}=1"), 400, "parameter_name_too_long")
    assert "21 characters long; the limit is 20" in body["message"]
    assert client.get(f"{URL}?conversion_id=c&{'n' * 20}=1").status_code == 200


def test_long_parameter_value_is_400_in_query_and_json(client, involve, limits):
    body = refused(
        client, involve, client.get(f"{URL}?conversion_id=c&aff_sub={'v' * 301}"), 400, "parameter_value_too_long"
    )
    assert body["errors"] == {"aff_sub": "is 301 characters long; the limit is 300"}
    nested = json.dumps({"conversion_id": "c", "extra": {"deep": "w" * 300}})
    response = client.post(URL, data=nested, content_type="application/json")
    refused(client, involve, response, 400, "parameter_value_too_long")


def test_limits_default_to_documented_values(settings):
    assert settings.POSTBACK_MAX_BODY_BYTES == 65536
    assert settings.POSTBACK_MAX_PARAMS == 100
    assert settings.POSTBACK_MAX_PARAM_NAME_LENGTH == 100
    assert settings.POSTBACK_MAX_PARAM_VALUE_LENGTH == 2048


@pytest.mark.parametrize("method", ["put", "patch", "delete", "options"])
def test_other_methods_are_405_with_allow(client, involve, method):
    response = getattr(client, method)(f"{URL}?conversion_id=m")
    assert response.status_code == 405
    assert response["Allow"] == "GET, POST"
    assert not partner_rows(involve).exists()


@pytest.mark.parametrize(
    "send",
    [
        lambda client: client.get(URL),
        lambda client: client.get(URL + "?"),
        lambda client: client.post(URL, data="", content_type="application/x-www-form-urlencoded"),
        lambda client: client.post(URL, data=b"", content_type="application/json"),
    ],
    ids=["get", "get-empty-query", "post-empty-form", "post-empty-json"],
)
def test_a_request_with_no_parameters_at_all_is_400_and_stores_nothing(client, involve, send):
    body = refused(client, involve, send(client), 400, "no_parameters")
    assert body["errors"] == {"parameters": "none were sent"}
    assert "conversion_id" in body["message"]


def test_a_body_that_cannot_be_read_is_still_stored_as_rejected(client, involve):
    response = client.post(URL, data=b"\xff\xfe not json", content_type="application/json")
    assert response.status_code == 400, response.content
    assert partner_rows(involve).count() == 1
