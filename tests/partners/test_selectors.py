"""The partner directory: cached lookups, and unknown endpoints that cost nothing."""

import time

from django.db import connections
from django.test.utils import CaptureQueriesContext

from partners.selectors import partner_directory
from partners.services import partner_create


def seed(code: str, tmp_path) -> None:
    partner_create(
        partner_code=code,
        partner_name=code,
        endpoint_path=f"/{code}/event",
        database_name=f"{code}_db",
        database_url=f"sqlite:///{tmp_path}/{code}.sqlite3",
    )


def test_requests_to_unknown_endpoints_reload_the_configuration_at_most_once_a_second(live_db, tmp_path, settings):
    settings.PARTNER_NOT_FOUND_SECONDS = 1.0
    seed("known", tmp_path)
    assert partner_directory.by_endpoint("known/event") is not None
    with CaptureQueriesContext(connections["default"]) as queries:
        for number in range(500):
            assert partner_directory.by_endpoint(f"nobody-{number}/event") is None
    assert len(queries) <= 1


def test_a_partner_added_elsewhere_is_found_within_the_not_found_interval(live_db, tmp_path, settings):
    from partners.models import Partner

    settings.PARTNER_NOT_FOUND_SECONDS = 0.3
    seed("first", tmp_path)
    assert partner_directory.by_endpoint("later/event") is None
    # another instance adds it: no clear() of this process's directory
    Partner.objects.create(
        partner_code="later", partner_name="later", endpoint_path="/later/event", database_name="later_db"
    )
    time.sleep(0.35)
    assert partner_directory.by_endpoint("later/event").partner_code == "later"


def test_a_deactivated_partner_is_gone_after_the_cache_interval(live_db, tmp_path, settings):
    from partners.models import Partner

    settings.PARTNER_CACHE_SECONDS = 0.3
    seed("leaving", tmp_path)
    assert partner_directory.by_endpoint("leaving/event") is not None
    Partner.objects.filter(partner_code="leaving").update(is_active=False)
    time.sleep(0.35)
    assert partner_directory.by_endpoint("leaving/event") is None
