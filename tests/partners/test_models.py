import pytest
from django.core.exceptions import ValidationError

from partners.models import Partner


def partner(**fields):
    values = {
        "partner_code": "acme",
        "partner_name": "Acme",
        "endpoint_path": "/acme/event",
        "database_name": "acme_db",
        "parameter_mapping": {"sub_id": "s1"},
    }
    values.update(fields)
    return Partner(**values)


def errors_of(instance):
    with pytest.raises(ValidationError) as info:
        instance.full_clean(validate_unique=False)
    return info.value.message_dict


def test_endpoint_path_is_normalised_to_one_leading_slash():
    instance = partner(endpoint_path="acme/event/")
    instance.full_clean(validate_unique=False)
    assert instance.endpoint_path == "/acme/event"


@pytest.mark.parametrize("path", ["/acme event", "/acme//event", "/acme/?x=1", "/"])
def test_bad_endpoint_paths_are_refused(path):
    assert "endpoint_path" in errors_of(partner(endpoint_path=path))


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ({"usd_payout": "usd_payout"}, "'usd_payout' is not one of our fields"),
        ({"sub_id": ""}, "'sub_id' needs the partner's parameter name."),
        ({"sub_id": "x", "click_id": "x"}, "'x' is mapped twice (to 'sub_id' and 'click_id')."),
        (["sub_id"], "Must be an object of our field -> the partner's parameter name."),
    ],
)
def test_mapping_keys_must_be_our_fields(mapping, message):
    assert message in errors_of(partner(parameter_mapping=mapping))["parameter_mapping"][0]


def test_default_is_not_a_partner_database_name():
    assert "database_name" in errors_of(partner(database_name="default"))


def test_database_name_must_be_an_identifier():
    assert "database_name" in errors_of(partner(database_name="Acme-DB"))


def test_unknown_time_zone_is_refused():
    assert errors_of(partner(timezone="Mars/Olympus"))["timezone"] == [
        "'Mars/Olympus' is not an IANA time zone (e.g. UTC, Asia/Singapore)."
    ]


@pytest.mark.parametrize("path", ["/acme/stats", "/acme/event/conversions", "stats", "/a/conversions/"])
def test_endpoint_paths_ending_in_the_read_api_suffixes_are_refused(path):
    message = errors_of(partner(endpoint_path=path))["endpoint_path"][0]
    assert message == (
        "An endpoint path may not end in /stats or /conversions: "
        "/partner/<endpoint>/stats and /partner/<endpoint>/conversions are the partner's read API."
    )


@pytest.mark.parametrize("path", ["/acme/statistics", "/stats/event", "/conversions/acme", "/acme/stats2"])
def test_endpoint_paths_merely_containing_the_suffixes_are_fine(path):
    partner(endpoint_path=path).full_clean(validate_unique=False)


# --- endpoint paths, parameter names, database names ------------------------------


@pytest.mark.parametrize("path", ["/partner/x/event", "partner/x/event", "/partner"])
def test_an_endpoint_path_starting_with_partner_is_refused_saying_the_url(path):
    message = errors_of(partner(endpoint_path=path))["endpoint_path"][0]
    assert "Leave out /partner" in message
    assert f"would make it /partner/{path.strip('/')}" in message


@pytest.mark.parametrize("path", ["/X/Event", "/acme/Event", "/ACME"])
def test_an_endpoint_path_with_capitals_is_refused_naming_the_lowercase_one(path):
    message = errors_of(partner(endpoint_path=path))["endpoint_path"][0]
    assert "lowercase" in message and path.lower() in message


@pytest.mark.parametrize("path", ["/./event", "/acme/../event", "/acme/.."])
def test_dot_segments_are_refused(path):
    assert "endpoint_path" in errors_of(partner(endpoint_path=path))


@pytest.mark.parametrize("param", ["aff sub", "a&b", "a=b", "{aff_sub}", "a?b", "a#b", "a%20b", "a+b", "é"])
def test_parameter_names_that_cannot_stand_in_a_url_are_refused(param):
    message = errors_of(partner(parameter_mapping={"sub_id": param}))["parameter_mapping"][0]
    assert message.startswith("'sub_id': ") and "letters, digits" in message


def test_parameter_names_longer_than_a_postback_may_send_are_refused():
    message = errors_of(partner(parameter_mapping={"sub_id": "x" * 101}))["parameter_mapping"][0]
    assert message == "'sub_id': a parameter name is at most 100 characters."


@pytest.mark.parametrize("param", ["aff_sub", "sub1", "click.id", "s:1", "aff-sub", "AffSub"])
def test_usual_parameter_names_are_accepted(param):
    partner(parameter_mapping={"sub_id": param}).full_clean(validate_unique=False)


def test_a_partner_saved_from_code_is_validated_first(live_db):
    # The original design's recipe for a new partner: keys that are not our fields.
    new_partner = Partner(
        partner_code="new_partner",
        partner_name="New Partner",
        endpoint_path="/new/event",
        cloud_run_service_name="new-partner-service",
        database_name="new_partner_db",
        parameter_mapping={"param1": "mapped_param1", "param2": "mapped_param2"},
    )
    with pytest.raises(ValidationError) as info:
        new_partner.save()
    assert "'param1' is not one of our fields" in info.value.message_dict["parameter_mapping"][0]
    assert not Partner.objects.filter(partner_code="new_partner").exists()


def test_a_partner_saved_from_code_gets_its_path_normalised_and_a_database_name(live_db):
    saved = Partner(partner_code="new_partner", partner_name="New", endpoint_path="new/event/")
    saved.save()
    saved.refresh_from_db()
    assert (saved.endpoint_path, saved.database_name) == ("/new/event", "new_partner_db")


def test_the_default_database_name_is_unique_and_an_identifier(live_db):
    Partner(partner_code="acme", partner_name="Acme", endpoint_path="/acme/a").save()
    Partner(partner_code="other", partner_name="Other", endpoint_path="/other/a", database_name="acme2_db").save()
    taken = Partner(partner_code="acme2", partner_name="Acme 2", endpoint_path="/acme/b")
    taken.save()
    digits = Partner(partner_code="9lives", partner_name="Nine", endpoint_path="/nine/a")
    digits.save()
    assert taken.database_name == "acme2_2_db"
    assert digits.database_name == "p_9lives_db"
    long = Partner(partner_code="x" * 50, partner_name="Long", endpoint_path="/long/a")
    long.save()
    assert len(long.database_name) <= 63 and long.database_name.endswith("_db")


def test_an_unchanged_legacy_endpoint_with_capitals_still_saves(live_db):
    Partner(partner_code="legacy", partner_name="Legacy", endpoint_path="/legacy/a", database_name="legacy_db").save()
    Partner.objects.filter(partner_code="legacy").update(endpoint_path="/Legacy/Event")
    legacy = Partner.objects.get(partner_code="legacy")
    legacy.partner_name = "Legacy network"
    legacy.save()  # networks already post to it: an unrelated change must not force a new URL
    legacy.endpoint_path = "/Legacy/Other"
    with pytest.raises(ValidationError):
        legacy.save()
