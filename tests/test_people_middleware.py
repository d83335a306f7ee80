"""Postbacks skip the middleware that serves people; the admin and the API keep all of it."""

import pytest
from django.contrib.auth.models import Permission, User
from django.core.checks import run_checks
from django.test import Client, override_settings

from infra.middleware import machine_request

POSTBACK = "/partner/involve/event"


@pytest.mark.parametrize(
    ("path", "machine"),
    [
        (POSTBACK, True),
        ("/partner/rector/any/depth", True),
        ("/partner/involve/event/stats", False),
        ("/partner/involve/event/conversions", False),
        ("/admin/", False),
        ("/admin/login/", False),
        ("/health", False),
        ("/static/admin/css/base.css", False),
        ("/static/x.css", False),
        ("/admin", False),  # the admin's slash redirect
        # Any other root path is one of the partners' extra paths, or a plain 404: a machine's.
        ("/nowhere", True),
        ("/involve/event", True),
    ],
)
def test_only_the_postback_route_is_a_machine_endpoint(rf, path, machine):
    assert machine_request(rf.get(path)) is machine


def test_a_postback_answer_carries_no_session_cookie_vary_or_frame_header_and_a_length(client, involve):
    # A browser session on the same client: a postback neither reads nor refreshes it.
    client.force_login(User.objects.create_superuser("root-user", password="x"))
    response = client.get(POSTBACK, {"conversion_id": "people-1"})
    assert response.status_code == 200, response.content
    assert response.json()["status"] == "success"
    assert "Set-Cookie" not in response.headers and not response.cookies
    assert "Cookie" not in response.get("Vary", "")
    assert "X-Frame-Options" not in response.headers
    assert int(response["Content-Length"]) == len(response.content)
    # The security headers of SecurityMiddleware stay.
    assert response["X-Content-Type-Options"] == "nosniff"


def test_a_postback_posted_without_a_csrf_token_is_accepted(involve):
    response = Client(enforce_csrf_checks=True).post(POSTBACK, {"conversion_id": "people-2"})
    assert response.status_code == 200, response.content
    assert response.json()["status"] == "success"


def test_the_admin_keeps_sessions_csrf_messages_and_frame_headers(involve):
    User.objects.create_superuser("manager", password="a-long-password-1")
    browser = Client(enforce_csrf_checks=True)
    login = browser.get("/admin/login/")
    assert login["X-Frame-Options"] == "DENY"
    assert "csrftoken" in login.cookies
    refused = browser.post("/admin/login/", {"username": "manager", "password": "a-long-password-1"})
    assert refused.status_code == 403  # no CSRF token: CsrfViewMiddleware's process_view ran
    token = login.cookies["csrftoken"].value
    logged_in = browser.post(
        "/admin/login/?next=/admin/",
        {"username": "manager", "password": "a-long-password-1", "csrfmiddlewaretoken": token},
    )
    assert logged_in.status_code == 302 and "sessionid" in logged_in.cookies
    page = browser.get("/admin/")
    assert page.status_code == 200 and page.context["user"].username == "manager"
    # The slash redirect of CommonMiddleware still serves the admin.
    assert browser.get("/admin").status_code == 301


def test_the_api_still_authenticates_a_browser_session(client, involve):
    reader = User.objects.create_user("session-reader", password="x")
    reader.user_permissions.add(
        Permission.objects.get(content_type__app_label="conversions", codename="view_partnerconversion")
    )
    client.force_login(reader)
    assert client.get(POSTBACK + "/stats").status_code == 200


def test_the_checks_require_the_people_middleware_in_place_of_djangos():
    assert [message.id for message in run_checks() if message.id.startswith("postback_site")] == []
    with override_settings(PEOPLE_MIDDLEWARE=["django.middleware.common.CommonMiddleware"]):
        missing = [message for message in run_checks() if message.id == "postback_site.E002"]
    assert len(missing) == 5
    assert any("AuthenticationMiddleware" in message.msg and "admin.E408" in message.msg for message in missing)
    with override_settings(MIDDLEWARE=["django.middleware.security.SecurityMiddleware"]):
        assert "postback_site.E001" in [message.id for message in run_checks()]
