"""Answers outside the routes: JSON for senders (bad Host, near-miss paths, errors), the
admin's own HTML pages inside /admin/, and no 500 for malformed credentials or filters."""

import pytest
from django.test import Client

import postback_site.views

CONVERSIONS_ADMIN = "/admin/conversions/partnerconversion/"


def assert_json_error(response, status: int) -> dict:
    assert response.status_code == status, response.content[:300]
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert body["status"] == "error" and body["message"]
    return body


@pytest.mark.parametrize("path", ["/partner/involve/event?conversion_id=h1", "/health", "/nowhere"])
def test_a_host_the_service_does_not_answer_to_gets_a_json_400(client, path):
    body = assert_json_error(client.get(path, HTTP_HOST="evil.com"), 400)
    assert body["message"] == "Invalid Host header 'evil.com': not a host name of this service"


@pytest.mark.parametrize(
    "path", ["//partner/involve/event", "/PARTNER/involve/event", "/partner/", "/partner", "/Partner/involve/event"]
)
def test_paths_just_outside_the_postback_route_get_a_json_404(client, involve, path):
    # PATH_INFO directly: the test client would read `//partner` as a host name.
    response = client.get("/", {"conversion_id": "near-1"}, PATH_INFO=path)
    body = assert_json_error(response, 404)
    assert body["message"] == f"Not found: {path!r}. Postbacks go to /partner/<endpoint_path>."


def test_a_very_long_unknown_path_is_not_echoed_whole(client):
    body = assert_json_error(client.get("/" + "x" * 5000), 404)
    assert len(body["message"]) < 300


def test_an_unexpected_error_outside_the_admin_is_a_json_500_without_a_traceback(live_db, monkeypatch):
    def broken(self, request):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(postback_site.views.InfoView, "get", broken)
    response = Client(raise_request_exception=False).get("/info")
    body = assert_json_error(response, 500)
    assert body["message"] == "Internal server error"
    assert b"secret internals" not in response.content


def test_the_admin_keeps_its_html_pages(analyst_client, involve):
    missing = analyst_client.get("/admin/no-such-page/")
    assert missing.status_code == 404 and missing["Content-Type"].startswith("text/html")
    bad_host = analyst_client.get("/admin/", HTTP_HOST="evil.com")
    assert bad_host.status_code == 400 and bad_host["Content-Type"].startswith("text/html")


@pytest.mark.parametrize("code", ["%00", "bad%00code", "Involve_Asia", "x" * 60])
def test_a_partner_parameter_that_cannot_be_a_partner_code_is_a_400_in_the_admin(analyst_client, involve, code):
    response = analyst_client.get(f"{CONVERSIONS_ADMIN}?partner={code}")
    assert response.status_code == 400
    assert response["Content-Type"].startswith("text/html")
    inside_filters = analyst_client.get(f"{CONVERSIONS_ADMIN}1/change/?_changelist_filters=partner%3D{code}")
    assert inside_filters.status_code == 400


@pytest.mark.parametrize("supplied", ["tökén", "Ã¶Ã©", "🔑"])
def test_a_non_ascii_metrics_token_is_a_json_401(client, settings, supplied):
    settings.METRICS_TOKEN = "m-secret"
    body = assert_json_error(client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {supplied}"), 401)
    assert body["message"] == "Invalid metrics token"
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer m-secret").status_code == 200


def test_a_non_ascii_configured_metrics_token_works(client, settings):
    settings.METRICS_TOKEN = "jeton-privé"
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer jeton-privé").status_code == 200
    assert_json_error(client.get("/metrics", HTTP_AUTHORIZATION="Bearer jeton-prive"), 401)
