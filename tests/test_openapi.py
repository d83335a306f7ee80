"""The OpenAPI schema and the docs page, served by us with no outside assets."""

import re

import pytest
from django.contrib.staticfiles import finders
from drf_spectacular.validation import validate_schema

from conversions.outcomes import Outcome
from partners.mapping import CANONICAL_FIELDS

pytestmark = pytest.mark.django_db


@pytest.fixture
def schema(client):
    response = client.get("/api/schema/?format=json")
    assert response.status_code == 200
    return response.json()


def test_schema_is_valid_openapi_3(schema):
    validate_schema(schema)  # raises on any violation of the OpenAPI 3.0 JSON schema
    assert schema["openapi"].startswith("3.")


def test_schema_describes_every_endpoint(schema):
    assert set(schema["paths"]) >= {
        "/health",
        "/info",
        "/partner/{endpoint_path}",
        "/partner/{endpoint_path}/conversions",
        "/partner/{endpoint_path}/stats",
    }


@pytest.mark.parametrize("method", ["get", "post"])
def test_postback_documents_its_parameters_and_each_response(schema, method):
    operation = schema["paths"]["/partner/{endpoint_path}"][method]
    # every status the outcome table answers with (conversions/outcomes.py)
    assert set(operation["responses"]) == {str(outcome.http_status) for outcome in Outcome}
    assert set(operation["responses"]) == {"200", "400", "403", "404", "405", "413", "429", "503"}
    names = {parameter["name"] for parameter in operation["parameters"]}
    assert names == {"endpoint_path", *CANONICAL_FIELDS}
    assert operation.get("security", []) in ([], [{}])  # partners call it without credentials
    assert "security" not in schema
    success = operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    assert success == "#/components/schemas/PostbackResult"
    if method == "post":
        assert set(operation["requestBody"]["content"]) == {"application/json", "application/x-www-form-urlencoded"}


@pytest.mark.parametrize("suffix", ["conversions", "stats"])
def test_read_api_requires_a_token_or_session_and_lists_its_errors(schema, suffix):
    operation = schema["paths"][f"/partner/{{endpoint_path}}/{suffix}"]["get"]
    assert operation["security"] == [{"tokenAuth": []}, {"cookieAuth": []}]
    assert {"200", "400", "401", "403", "404", "503"} <= set(operation["responses"])
    names = {parameter["name"] for parameter in operation["parameters"]}
    assert {"from", "to", "time_field"} <= names


def test_conversions_documents_every_filter_and_the_csv_format(schema):
    operation = schema["paths"]["/partner/{endpoint_path}/conversions"]["get"]
    names = {parameter["name"] for parameter in operation["parameters"]}
    assert names >= {"offer_name", "offer_id", "sub_id", "media_id", "click_id", "conversion_id", "status"}
    assert names >= {"is_duplicate", "has_error", "limit", "cursor", "format"}
    assert set(operation["responses"]["200"]["content"]) == {"application/json", "text/csv"}


def test_docs_page_loads_only_our_own_assets(client):
    response = client.get("/api/docs/")
    assert response.status_code == 200
    html = response.content.decode()
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert len(assets) >= 3
    for asset in assets:
        assert asset.startswith("/static/"), asset
        assert finders.find(asset.removeprefix("/static/")), f"{asset} is not among our static files"
    assert 'url: "/api/schema/"' in html
    assert "http://" not in html and "https://" not in html
