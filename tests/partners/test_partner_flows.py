"""The account manager's partner flows: endpoint and parameter names refused with a form
error, a default database name, the secret's Generate / Rotate and Copy, and the test
postback shaped by the partner's own mapping, secret and allowlist."""

import re

import pytest

from conversions.ingest.access import postback_access_check
from conversions.ingest.parse import postback_parse
from infra.databases import partner_database_unregister
from partners import forms as partner_forms
from partners.models import Partner
from tests.partners.test_admin import ADD_URL, form_data, page_text


@pytest.fixture
def acme_alias():
    yield "acme_db"
    partner_database_unregister("acme_db")


# --- endpoint path and parameter names: form errors, nothing saved --------------------


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/partner/x/event", "Leave out /partner: enter /x/event, and its URL is /partner/x/event"),
        ("/X/Event", "Use lowercase: /x/event. Endpoint paths are case-sensitive"),
        ("/x event", "Use path segments of letters, digits"),
        ("/x/../event", "A segment may not be '.' or '..'"),
    ],
)
def test_an_endpoint_path_that_would_not_work_is_a_form_error(manager_client, path, message):
    response = manager_client.post(ADD_URL, form_data(endpoint_path=path))
    assert response.status_code == 200
    assert message in page_text(response)
    assert not Partner.objects.filter(partner_code="acme").exists()


@pytest.mark.parametrize("param", ["aff sub", "a&b", "a=b", "{aff_sub}"])
def test_a_parameter_name_that_would_break_the_postback_url_is_a_row_error(manager_client, param):
    response = manager_client.post(ADD_URL, form_data([("sub_id", "aff_sub"), ("click_id", param)]))
    assert response.status_code == 200
    assert "Row 2 (click_id): " in page_text(response) and "cannot stand in a URL as it is" in page_text(response)
    assert re.search(r'<tr class="rows-row row-error" data-row="2">', response.content.decode())
    assert not Partner.objects.filter(partner_code="acme").exists()


def test_an_empty_database_name_becomes_one_made_of_the_code(manager_client, database_pool, backend, acme_alias):
    # The database URL names the database (a file, or a schema): its name is the alias.
    response = manager_client.post(
        ADD_URL, form_data(database_name="", database_url=database_pool.url(backend, "acme_db")), follow=True
    )
    assert response.status_code == 200, page_text(response)
    assert Partner.objects.get(partner_code="acme").database_name == "acme_db"
    add_form = manager_client.get(ADD_URL).content.decode()
    assert 'placeholder="&lt;partner code&gt;_db"' in add_form
    assert "Leave empty for one made of the partner code" in page_text(manager_client.get(ADD_URL))


# --- the secret: Generate when there is none, Rotate or remove when there is ----------


def test_the_secret_button_says_generate_then_rotate_and_the_new_secret_has_a_copy_button(manager_client, involve):
    change_url = f"/admin/partners/partner/{involve.pk}/change/"
    secret_url = f"/admin/partners/partner/{involve.pk}/secret/"
    assert re.search(r'id="secret-action"[^>]*>Generate…</a>', manager_client.get(change_url).content.decode())
    page = manager_client.get(secret_url)
    assert "Generate a secret" in page_text(page) and "Remove the secret" not in page_text(page)

    generated = manager_client.post(secret_url, {"action": "rotate"}).content.decode()
    secret = re.search(r'<code id="new-secret">([^<]+)</code>', generated).group(1)
    assert re.search(r'<button type="button" class="button" id="copy-secret" data-copy-target="new-secret"', generated)
    assert "partners/copy_button.js" in generated
    assert "the old secret stops working" not in generated  # there was none

    change = manager_client.get(change_url).content.decode()
    assert re.search(r'id="secret-action"[^>]*>Rotate or remove…</a>', change) and secret not in change
    page = manager_client.get(secret_url)
    assert "Rotate: generate a new secret" in page_text(page) and "Remove the secret" in page_text(page)
    rotated = manager_client.post(secret_url, {"action": "rotate"}).content.decode()
    assert "the old secret stops working" in rotated and secret not in rotated


# --- the test postback: this partner's names, secret and allowlist --------------------


def test_the_test_postback_is_prefilled_and_explained_in_the_partners_own_names(manager_client, involve, rector):
    rector_page = manager_client.get(f"/admin/partners/partner/{rector.pk}/test-postback/")
    text = page_text(rector_page)
    assert "aff_sub" not in text  # InvolveAsia's macro is not Rector's
    box = re.search(r"<textarea[^>]*>(.*?)</textarea>", rector_page.content.decode(), re.S).group(1)
    assert box.startswith("media_id=media-1&amp;sub_id=sub-1") or "sub_id=sub-1" in box
    assert "Rector's parameters" in text
    involve_page = manager_client.get(f"/admin/partners/partner/{involve.pk}/test-postback/").content.decode()
    row = re.search(r'<tr data-parameter-of="sub_id">(.*?)</tr>', involve_page, re.S).group(1)
    assert "aff_sub" in row and "sub-1" in row
    assert "conversion_status=approved" in re.search(r"<textarea[^>]*>(.*?)</textarea>", involve_page, re.S).group(1)
    # The example as prefilled is a postback that would be recorded.
    example = involve.postback_example
    url = f"/admin/partners/partner/{involve.pk}/test-postback/"
    result = page_text(manager_client.post(url, {"payload": example}))
    assert "Would be recorded (HTTP 200)" in result


def test_the_test_postback_says_what_a_network_without_the_secret_or_outside_the_allowlist_gets(
    manager_client, involve
):
    involve.postback_secret = "s" * 32
    involve.allowed_ips = "203.0.113.0/24"
    involve.save()
    page = page_text(manager_client.get(f"/admin/partners/partner/{involve.pk}/test-postback/"))
    assert "Without it the network gets HTTP 403 token_missing" in page
    assert "An IP allowlist: 203.0.113.0/24. From any other address the network gets HTTP 403 ip_not_allowed" in page
    assert "s" * 32 not in page


def guards_of(form: partner_forms.TestPostbackForm, partner: Partner):
    """What the real guards decide about the request the form says the network would send."""
    assert form.is_valid(), form.errors
    return postback_access_check(partner=partner, postback=postback_parse(form.postback_request()))


def test_the_request_the_test_postback_sends_gets_what_the_network_would_from_the_real_guards(involve):
    involve.postback_secret = "a-secret-of-32-characters-long-x"
    involve.allowed_ips = "203.0.113.0/24, 2001:db8::/32"
    involve.save()
    unbound = partner_forms.TestPostbackForm(partner=involve)
    assert unbound["with_secret"].value() is True and unbound["client_ip"].value() == "203.0.113.0"
    payload = involve.postback_example

    def form(**data: str) -> partner_forms.TestPostbackForm:
        return partner_forms.TestPostbackForm({"payload": payload, **data}, partner=involve)

    as_configured = form(with_secret="on", client_ip="203.0.113.7")
    assert guards_of(as_configured, involve) is None
    request = as_configured.postback_request()
    assert request.path == "/partner/involve/event" and request.GET["aff_sub"] == "sub-1"

    without_secret = form(client_ip="203.0.113.7")
    assert guards_of(without_secret, involve).reason == "token_missing"
    wrong_token = form(payload=payload + "&token=nope", client_ip="203.0.113.7")
    assert guards_of(wrong_token, involve).reason == "token_invalid"
    elsewhere = form(with_secret="on", client_ip="198.51.100.1")
    refusal = guards_of(elsewhere, involve)
    assert refusal.reason == "ip_not_allowed" and "198.51.100.1" in refusal.message
    as_json = form(payload='{"conversion_id": "J1"}', with_secret="on", client_ip="2001:db8::1")
    assert guards_of(as_json, involve) is None
    assert postback_parse(as_json.postback_request()).params == {"conversion_id": "J1"}
    assert not form(client_ip="not an address").is_valid()


def test_a_partner_without_secret_or_allowlist_asks_neither(involve):
    form = partner_forms.TestPostbackForm(partner=involve)
    assert set(form.fields) == {"payload"}
    assert "aff_sub=sub-1" in form["payload"].value()
