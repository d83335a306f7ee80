"""Channel health's series on /metrics, read from `default` at scrape time."""

import datetime

import pytest
from django.db import DatabaseError
from django.test import override_settings

from health.models import Incident, PartnerHealth

CHECKED = datetime.datetime(2026, 12, 6, 10, 0, 30, tzinfo=datetime.UTC)
RECEIVED = datetime.datetime(2026, 12, 6, 9, 57, 0, tzinfo=datetime.UTC)


def scrape(client) -> str:
    with override_settings(METRICS_TOKEN="metrics-token-123"):
        response = client.get("/metrics", HTTP_AUTHORIZATION="Bearer metrics-token-123")
    assert response.status_code == 200
    return response.content.decode()


def samples(body: str, name: str) -> dict[str, float]:
    """`name`'s samples: labels text -> value."""
    found = {}
    for line in body.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            labels, _, value = line[len(name) :].rpartition(" ")
            found[labels] = float(value)
    return found


@pytest.mark.parametrize("backend", ["sqlite"])
def test_last_postback_open_incidents_and_last_check_per_partner(client, involve, rector):
    PartnerHealth.objects.create(partner=involve, light="red", last_received_at=RECEIVED, checked_at=CHECKED)
    PartnerHealth.objects.create(
        partner=rector, light="green", last_received_at=None, checked_at=CHECKED - datetime.timedelta(minutes=1)
    )
    Incident.objects.create(partner=involve, rule="silent", summary="silent")
    Incident.objects.create(partner=involve, rule="publisher_paused", subject="pub-a", summary="pub-a paused")
    Incident.objects.create(partner=involve, rule="publisher_paused", subject="pub-b", summary="pub-b paused")
    Incident.objects.create(partner=rector, rule="drop", summary="resolved", state=Incident.RESOLVED)

    body = scrape(client)

    assert samples(body, "postback_partner_last_received_timestamp_seconds") == {
        '{partner="involve_asia"}': RECEIVED.timestamp()
    }  # rector has never received one: no sample, not 0 (1970)
    assert samples(body, "postback_health_open_incidents") == {
        '{partner="involve_asia",rule="publisher_paused"}': 2.0,
        '{partner="involve_asia",rule="silent"}': 1.0,
    }
    assert samples(body, "postback_health_open_incidents_total") == {"": 3.0}
    assert samples(body, "postback_health_checked_timestamp_seconds") == {"": CHECKED.timestamp()}
    assert "# TYPE postback_health_open_incidents gauge" in body


def test_nothing_checked_yet_scrapes_zero_incidents_and_no_check_time(client, live_db):
    body = scrape(client)

    assert samples(body, "postback_health_open_incidents_total") == {"": 0.0}
    assert samples(body, "postback_health_checked_timestamp_seconds") == {}
    assert samples(body, "postback_partner_last_received_timestamp_seconds") == {}


def test_an_unreadable_default_leaves_out_the_health_series_not_the_scrape(client, live_db, monkeypatch):
    def unreadable(*args, **kwargs):
        raise DatabaseError("default is away")

    monkeypatch.setattr(PartnerHealth.objects, "order_by", unreadable)

    body = scrape(client)

    assert "postback_health_open_incidents_total" not in body
    assert "postback_requests" in body or "postback_database_connections" in body  # the rest is still served
