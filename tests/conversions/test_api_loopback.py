"""The embedded default's token-free reads from the machine itself, and what every 401 says."""

import pytest
from rest_framework.authtoken.models import Token

from tests.conversions.test_api import CONVERSIONS, STATS, add

pytestmark = pytest.mark.usefixtures("involve")


@pytest.fixture
def loopback_open(settings):
    settings.LOOPBACK_READS_WITHOUT_TOKEN = True


@pytest.mark.parametrize("url", [STATS, CONVERSIONS + "?limit=10"])
@pytest.mark.parametrize("address", ["127.0.0.1", "::1", "127.0.0.2", "::ffff:127.0.0.1"])
@pytest.mark.parametrize("host", ["localhost:8000", "127.0.0.1:8000", "[::1]:8000", "localhost"])
def test_the_machine_itself_reads_without_a_token(client, involve, loopback_open, url, address, host):
    add(involve, conversion_id="local-1", usd_sale_amount="99.99")
    response = client.get(url, REMOTE_ADDR=address, HTTP_HOST=host)
    assert response.status_code == 200, response.content
    assert response.json()["partner"]["code"] == "involve_asia"


@pytest.mark.parametrize(
    "headers",
    [
        {"REMOTE_ADDR": "203.0.113.7"},
        {"REMOTE_ADDR": "10.0.0.5"},
        {"REMOTE_ADDR": "127.0.0.1", "HTTP_X_FORWARDED_FOR": "203.0.113.7"},
        {"REMOTE_ADDR": "127.0.0.1", "HTTP_FORWARDED": "for=203.0.113.7"},
        {"REMOTE_ADDR": "127.0.0.1", "HTTP_X_REAL_IP": "203.0.113.7"},
        {"REMOTE_ADDR": "not-an-address"},
        # a web page that made its own name resolve to 127.0.0.1 (DNS rebinding)
        {"REMOTE_ADDR": "127.0.0.1", "HTTP_HOST": "attacker.example"},
        {"REMOTE_ADDR": "127.0.0.1", "HTTP_HOST": "localhost.attacker.example:8000"},
    ],
)
def test_anyone_else_needs_a_token(client, loopback_open, settings, headers):
    settings.ALLOWED_HOSTS = ["*"]  # whatever the Host check of the site lets through
    response = client.get(STATS, **{"HTTP_HOST": "localhost:8000", **headers})
    assert response.status_code == 401
    assert "drf_create_token" in response.json()["detail"]


def test_credentials_that_were_sent_are_checked_even_from_the_machine(client, loopback_open):
    response = client.get(
        STATS, HTTP_HOST="localhost:8000", HTTP_AUTHORIZATION="Token 0123456789abcdef0123456789abcdef01234567"
    )
    assert response.status_code == 401
    assert response.json()["detail"].startswith("Invalid token. Send an API token")


def test_the_local_reader_may_read_only(client, loopback_open):
    from conversions.api_auth import LocalReader

    reader = LocalReader()
    assert reader.has_perm("conversions.view_partnerconversion")
    assert not reader.has_perm("conversions.change_partnerconversion")
    assert not reader.has_perm("partners.change_partner")
    assert not reader.is_staff
    # The admin is not opened by it: no session, no staff.
    assert client.get("/admin/partners/partner/").status_code == 302


@pytest.mark.parametrize("url", [STATS, CONVERSIONS])
def test_off_every_401_says_how_to_get_a_token(client, url):
    response = client.get(url)
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Token"
    detail = response.json()["detail"]
    assert detail.startswith("Authentication credentials were not provided.")
    assert "Authorization: Token <key>" in detail and "python manage.py drf_create_token <username>" in detail


def test_a_user_without_the_permission_is_still_403_from_the_machine(client, loopback_open, django_user_model):
    user = django_user_model.objects.create_user("sales", password="not-used")
    response = client.get(
        STATS, HTTP_HOST="localhost", HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}"
    )
    assert response.status_code == 403
