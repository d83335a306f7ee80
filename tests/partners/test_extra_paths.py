"""A partner's extra paths (the addresses networks were given before) and its token
parameter's name: served exactly like /partner/<endpoint_path>, never shadowing the
service's own addresses or another partner's."""

import pytest
from django.core.exceptions import ValidationError

from infra.masking import MASK
from partners.models import Partner
from partners.selectors import partner_directory
from tests.conftest import partner_rows

# The previous service's InvolveAsia template, filled as its network sends it.
INVOLVE_TEMPLATE = (
    "?sub_id=RAMPUP-17&media_id=m-2&click_id=c-3&usd_sale_amount=99.99&usd_payout=9.99"
    "&offer_name=Shopee%20ID&conversion_id={id}&conversion_datetime=2026-12-01T10:00:00Z"
)


@pytest.fixture(autouse=True)
def fresh_directory():
    partner_directory.clear()
    yield
    partner_directory.clear()


def test_the_seed_extra_paths_answer_like_the_endpoint(client, involve):
    assert involve.extra_paths == ["/involve/event", "/postback/involve/event"]
    for n in range(10):
        response = client.get("/involve/event" + INVOLVE_TEMPLATE.format(id=f"old-{n}"))
        assert response.status_code == 200 and response.json()["status"] == "success", response.content
    for n in range(10):
        assert client.get("/involve/event" + INVOLVE_TEMPLATE.format(id=f"old-{n}")).json()["status"] == "duplicate"
    # the other path, and /partner/..., are the same partner: one original per conversion
    assert client.get("/postback/involve/event" + INVOLVE_TEMPLATE.format(id="old-1")).json()["status"] == "duplicate"
    assert client.get("/partner/involve/event" + INVOLVE_TEMPLATE.format(id="old-2")).json()["status"] == "duplicate"
    originals = partner_rows(involve).filter(duplicate_of__isnull=True, is_processed=True)
    assert originals.count() == 10
    stored = originals.get(conversion_id="old-0")
    assert (str(stored.usd_sale_amount), stored.sub_id, stored.conversion_datetime.isoformat()) == (
        "99.99",
        "RAMPUP-17",
        "2026-12-01T10:00:00+00:00",
    )


def test_a_post_and_an_invalid_postback_at_an_extra_path_are_answered_as_at_the_endpoint(client, involve):
    response = client.post("/involve/event", data={"conversion_id": "p-1", "usd_payout": "1.5"})
    assert response.status_code == 200 and response.json()["status"] == "success"
    invalid = client.get("/involve/event?conversion_id=p-2&usd_payout=abc")
    assert invalid.status_code == 400 and "usd_earning" in invalid.json()["errors"]
    assert client.get("/involve/event").json()["reason"] == "no_parameters"


@pytest.mark.parametrize("method", ["get", "post", "put", "delete"])
def test_a_root_path_no_partner_has_is_the_plain_404(client, involve, method):
    response = getattr(client, method)("/acesstrade/event?conversion_id=x")
    assert response.status_code == 404
    assert response.json()["message"] == "Not found: '/acesstrade/event'. Postbacks go to /partner/<endpoint_path>."
    assert not partner_rows(involve).exists()


def test_other_methods_at_an_extra_path_are_405_as_at_the_endpoint(client, involve):
    response = client.put("/involve/event?conversion_id=x")
    assert response.status_code == 405 and response["Allow"] == "GET, POST"


def test_an_inactive_partners_extra_paths_answer_404(client, involve):
    Partner.objects.filter(pk=involve.pk).update(is_active=False)
    partner_directory.clear()
    assert client.get("/involve/event" + INVOLVE_TEMPLATE.format(id="x")).status_code == 404


def test_the_services_own_addresses_are_not_shadowed(client, involve):
    assert client.get("/admin").status_code == 301  # the admin's slash redirect
    assert client.get("/admin/login/").status_code == 200
    assert client.get("/health").status_code == 200
    assert client.get("/info").json()["partners"][0]["also_accepted"] == [
        "http://testserver/involve/event",
        "http://testserver/postback/involve/event",
    ]
    assert client.get("/partner/involve/event" + INVOLVE_TEMPLATE.format(id="p")).json()["status"] == "success"
    assert client.get("/partner/involve/event/stats").status_code == 401
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/json").json()
    assert {"/{path}", "/partner/{endpoint_path}"} <= set(schema["paths"])
    assert schema["paths"]["/{path}"]["get"]["operationId"] == "postback_extra_path_get"


@pytest.mark.parametrize(
    "path, said",
    [
        ("/partner/involve/event", "one of the service's own addresses"),
        ("/admin", "one of the service's own addresses"),
        ("/admin/x", "one of the service's own addresses"),
        ("/api/schema", "one of the service's own addresses"),
        ("/static/x.css", "one of the service's own addresses"),
        ("/health", "one of the service's own addresses"),
        ("/Health", "one of the service's own addresses"),
        ("/info", "one of the service's own addresses"),
        ("/metrics", "one of the service's own addresses"),
        ("/favicon.ico", "one of the service's own addresses"),
        ("/Involve/Event", "use lowercase"),
        ("/a/../b", "'.' or '..'"),
        ("/a b", "use path segments"),
        ("/a?x=1", "use path segments"),
        ("", "use path segments"),
        ("/" + "a" * 101, "at most 100 characters"),
    ],
)
def test_extra_paths_that_would_shadow_or_break_are_refused(involve, path, said):
    involve.extra_paths = [path]
    with pytest.raises(ValidationError) as refused:
        involve.save()
    assert said in str(refused.value.message_dict["extra_paths"]), refused.value.message_dict


def test_an_extra_path_belongs_to_one_partner_and_is_listed_once(involve, make_partner):
    rector = make_partner("rector")
    rector.extra_paths = ["postback/involve/event/"]
    with pytest.raises(ValidationError) as refused:
        rector.save()
    assert "already an extra path of partner 'involve_asia'" in str(refused.value)
    rector.extra_paths = ["/rector/old", "/rector/old/"]
    with pytest.raises(ValidationError, match="listed twice"):
        rector.save()
    rector.extra_paths = ["rector/old/", "/r/event"]
    rector.save()
    assert Partner.objects.get(pk=rector.pk).extra_paths == ["/rector/old", "/r/event"]


def test_a_token_parameter_of_the_previous_service(client, make_partner):
    partner = make_partner("involve_asia", postback_secret="s3cret-value-0123456789", token_param="ts_token")
    url = "/postback/involve/event?conversion_id=t-1&usd_payout=2"
    assert client.get(url).json()["reason"] == "token_missing"
    assert "'ts_token' parameter" in client.get(url).json()["message"]
    assert client.get(url + "&ts_token=wrong-value-0000").json()["reason"] == "token_invalid"
    accepted = client.get(url + "&ts_token=s3cret-value-0123456789")
    assert accepted.status_code == 200 and accepted.json()["status"] == "success"
    stored = partner_rows(partner).get(conversion_id="t-1")
    assert "s3cret-value" not in str(stored.raw_data) and stored.raw_data["ts_token"] == MASK


def test_a_token_parameter_is_a_parameter_name_never_mapped(involve):
    involve.token_param = "ts token"
    with pytest.raises(ValidationError) as refused:
        involve.save()
    assert "token_param" in refused.value.message_dict
    involve.token_param = "key"
    with pytest.raises(ValidationError, match="must end in 'token'"):
        involve.save()
    involve.parameter_mapping = {**involve.parameter_mapping, "click_id": "click_token"}
    involve.token_param = "click_token"
    with pytest.raises(ValidationError, match="mapped to one of our fields"):
        involve.save()


def test_the_partner_page_shows_them_and_takes_one_per_line(manager_client, involve):
    page = manager_client.get(f"/admin/partners/partner/{involve.pk}/change/").content.decode()
    assert 'id="postback-extra-urls"' in page and "http://testserver/postback/involve/event" in page
    assert "/involve/event\n/postback/involve/event</textarea>" in page

    from partners.forms import ExtraPathsField

    field = ExtraPathsField(required=False)
    assert field.clean(" /a/event \n\n/b/event\n") == ["/a/event", "/b/event"]
    assert not field.has_changed(["/a/event"], "/a/event\n")


def test_the_previous_services_value_shapes_map_like_any_parameter(client, make_partner):
    mapping = {"conversion_id": "conversion_id", "usd_earning": "rewards", "conversion_datetime": "event_time"}
    partner = make_partner("legacy_shape", parameter_mapping=mapping, extra_paths=["/postback/legacy/event"])
    body = {"conversion_id": "L-1", "rewards": "12.50", "event_time": "2026-12-01T10:00:00Z", "event": "sale"}
    response = client.post("/postback/legacy/event", data=body, content_type="application/json")
    assert response.status_code == 200 and response.json()["status"] == "success", response.content
    stored = partner_rows(partner).get(conversion_id="L-1")
    assert (str(stored.usd_earning), stored.conversion_datetime.isoformat()) == ("12.50", "2026-12-01T10:00:00+00:00")
    assert stored.raw_data["event"] == "sale"


def test_a_token_parameter_is_masked_in_every_log_line():
    from infra.masking import log_text_masked, url_masked

    assert url_masked("/involve/event?ts_token=S3cret&x=1") == "/involve/event?ts_token=****&x=1"
    assert "S3cret" not in log_text_masked('GET /postback/involve/event?tlm_token=S3cret HTTP/1.1" 200')


def test_a_partner_stored_before_a_rule_was_tightened_can_still_have_its_secret_rotated(involve):
    from partners.services import partner_secret_rotate

    Partner.objects.filter(pk=involve.pk).update(parameter_mapping={"sub_id": "aff sub"})  # a space: refused now
    stored = Partner.objects.get(pk=involve.pk)
    partner_secret_rotate(partner=stored)
    assert Partner.objects.get(pk=involve.pk).postback_secret
    stored.partner_name = "InvolveAsia 2"
    with pytest.raises(ValidationError):
        stored.save()  # a whole save validates everything
