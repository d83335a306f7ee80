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


@pytest.mark.parametrize("path", ["/acme/statistics", "/stats/event", "/conversions/acme", "/acme/Stats"])
def test_endpoint_paths_merely_containing_the_suffixes_are_fine(path):
    partner(endpoint_path=path).full_clean(validate_unique=False)
