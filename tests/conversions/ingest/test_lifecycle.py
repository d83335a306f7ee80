"""Conversion lifecycle: status updates, stale retries, history, local currencies."""

import random
from collections import Counter
from decimal import Decimal

import pytest
from django.test import Client

from conversions.models import ConversionChange
from tests.conftest import fixture_queries, partner_rows, run_concurrently

ENDPOINT = "/partner/involve/event?"


def history(partner):
    return list(
        ConversionChange.objects.using(partner.database_alias)
        .order_by("id")
        .values_list("from_status", "to_status", "applied", "note")
    )


def test_created_pending_then_approved_updates_the_original(client, involve):
    created, approved = fixture_queries("involve_asia", "lifecycle_approve")[:2]

    first = client.get(ENDPOINT + created)
    second = client.get(ENDPOINT + approved)

    assert first.json()["status"] == "success"
    assert second.status_code == 200
    body = second.json()
    assert body["status"] == "updated"
    assert body["changes"] == {
        "status": ["pending", "approved"],
        "usd_earning": ["4.67", "4.94"],
        "payout_local": ["20.79", "22.00"],
    }
    row = partner_rows(involve).get()
    assert (row.status, row.status_raw, row.usd_earning, row.payout_local) == (
        "approved",
        "approved",
        Decimal("4.94"),
        Decimal("22.00"),
    )
    assert (row.currency, row.sale_amount_local, row.usd_sale_amount) == ("MYR", Decimal("415.80"), Decimal("93.47"))
    assert row.updated_at > row.created_at
    assert history(involve) == [("pending", "approved", True, "")]
    change = ConversionChange.objects.using(involve.database_alias).get()
    assert change.raw_data["conversion_status"] == "approved"
    assert change.changes["usd_earning"] == ["4.67", "4.94"]


def test_reversal(client, involve):
    created, reversed_ = fixture_queries("involve_asia", "lifecycle_reverse")
    client.get(ENDPOINT + created)
    assert client.get(ENDPOINT + reversed_).json()["status"] == "updated"
    row = partner_rows(involve).get()
    assert (row.status, row.usd_earning, row.currency) == ("rejected", Decimal("0.00"), "SGD")
    assert history(involve) == [("approved", "rejected", True, "")]


def test_duplicates_and_stale_retries_in_between(client, involve):
    created, approved = fixture_queries("involve_asia", "lifecycle_approve")[:2]
    outcomes = [client.get(ENDPOINT + q).json() for q in (created, created, approved, approved, created)]

    assert [o["status"] for o in outcomes] == ["success", "duplicate", "updated", "duplicate", "duplicate"]
    stale = outcomes[-1]
    assert stale["note"] == "stale: status 'pending' after 'approved' is not applied"
    assert stale["conversion"]["status"] == "approved"  # the current state, not rolled back
    original = partner_rows(involve).get(is_duplicate=False)
    assert (original.status, original.usd_earning) == ("approved", Decimal("4.94"))
    assert partner_rows(involve).filter(is_duplicate=True).count() == 2  # the two exact repeats
    assert history(involve) == [
        ("pending", "approved", True, ""),
        ("approved", "pending", False, "stale: status 'pending' after 'approved' is not applied"),
    ]


def test_paid_after_pending_is_reachable_through_approved(client, involve):
    base = "conversion_id=IA-7&usd_payout=5&conversion_status="
    client.get(ENDPOINT + base + "pending")
    assert client.get(ENDPOINT + base + "paid").json()["status"] == "updated"
    assert client.get(ENDPOINT + base + "approved").json()["status"] == "duplicate"
    assert partner_rows(involve).get(is_duplicate=False).status == "paid"


def test_reversal_cannot_be_undone_unless_the_partner_allows_it(client, make_partner):
    partner = make_partner("involve_asia")
    base = "conversion_id=IA-8&conversion_status="
    client.get(ENDPOINT + base + "rejected")
    assert client.get(ENDPOINT + base + "approved").json()["status"] == "duplicate"

    partner.status_transitions = [["rejected", "approved"]]
    partner.save()
    from partners.selectors import partner_directory

    partner_directory.clear()
    assert client.get(ENDPOINT + base + "approved").json()["status"] == "updated"
    assert partner_rows(partner).get(is_duplicate=False).status == "approved"


def test_partner_specific_status_values(client, make_partner):
    partner = make_partner(
        "numeric",
        parameter_mapping={"status": "state"},
        status_mapping={"1": "approved", "2": "pending", "3": "rejected", "cancelled": "rejected"},
    )
    client.get("/partner/numeric/event?conversion_id=n1&state=2")
    assert client.get("/partner/numeric/event?conversion_id=n1&state=1").json()["status"] == "updated"
    row = partner_rows(partner).get()
    assert (row.status, row.status_raw) == ("approved", "1")
    bad = client.get("/partner/numeric/event?conversion_id=n2&state=9")
    assert bad.status_code == 400
    assert bad.json()["errors"]["status"].startswith("state: '9' is not a known status")
    assert partner_rows(partner).get(conversion_id="n2").raw_data["state"] == "9"


def test_amount_change_in_the_same_status_is_an_update(client, involve):
    client.get(ENDPOINT + "conversion_id=IA-9&usd_payout=5&conversion_status=pending")
    response = client.get(ENDPOINT + "conversion_id=IA-9&usd_payout=6&conversion_status=pending")
    assert response.json()["status"] == "updated"
    assert response.json()["changes"] == {"usd_earning": ["5.00", "6.00"]}


def test_postback_without_status_compares_amounts_only(client, involve):
    client.get(ENDPOINT + "conversion_id=IA-10&usd_payout=5&conversion_status=approved")
    assert client.get(ENDPOINT + "conversion_id=IA-10&usd_payout=5").json()["status"] == "duplicate"
    assert partner_rows(involve).get(is_duplicate=False).status == "approved"


def test_shuffled_sequence_sent_concurrently_ends_in_the_last_state(involve):
    steps = [
        ("pending", "4.00"),
        ("approved", "4.50"),
        ("paid", "4.50"),
    ]
    queries = [
        ENDPOINT + f"conversion_id=IA-RACE&usd_payout={amount}&conversion_status={status}"
        for status, amount in steps
        for _repeat in range(4)
    ]
    random.Random(11).shuffle(queries)

    responses = run_concurrently(lambda i: Client().get(queries[i]), len(queries))

    assert [r for r in responses if isinstance(r, Exception)] == []
    assert Counter(r.status_code for r in responses) == {200: len(queries)}
    outcomes = Counter(r.json()["status"] for r in responses)
    assert outcomes["success"] == 1
    original = partner_rows(involve).get(is_duplicate=False)
    assert (original.status, original.usd_earning) == ("paid", Decimal("4.50"))
    applied = [(f, t) for f, t, applied, _note in history(involve) if applied]
    # applied changes form one chain ending in the final state (none when `paid` came first)
    assert all(applied[i][1] == applied[i + 1][0] for i in range(len(applied) - 1))
    assert not applied or applied[-1][1] == "paid"
    assert outcomes["updated"] == len(applied)
    # every postback is accounted for: original + duplicates + history rows
    duplicates = partner_rows(involve).filter(is_duplicate=True).count()
    stale = sum(1 for *_x, ok, _n in history(involve) if not ok)
    assert 1 + duplicates + len(applied) + stale == len(queries)


@pytest.mark.parametrize("order", [(0, 1, 2), (2, 1, 0), (1, 2, 0), (2, 0, 1)])
def test_final_state_does_not_depend_on_arrival_order(client, involve, order):
    steps = ["pending", "approved", "paid"]
    for index in order:
        client.get(ENDPOINT + f"conversion_id=IA-ORD&usd_payout={index + 1}&conversion_status={steps[index]}")
    original = partner_rows(involve).get(is_duplicate=False)
    assert (original.status, original.usd_earning) == ("paid", Decimal("3.00"))


def test_a_status_change_reads_the_original_first_and_inserts_nothing(client, involve):
    from django.db import connections
    from django.test.utils import CaptureQueriesContext

    created, approved = fixture_queries("involve_asia", "lifecycle_approve")[:2]
    client.get(ENDPOINT + created)
    with CaptureQueriesContext(connections[involve.database_alias]) as queries:
        assert client.get(ENDPOINT + approved).json()["status"] == "updated"
    statements = [query["sql"] for query in queries]
    assert not any('INSERT INTO "partner_conversions"' in sql for sql in statements)
    # one read of the original, nothing loaded afterwards
    assert len([sql for sql in statements if sql.startswith("SELECT")]) == 1
    assert partner_rows(involve).count() == 1
    assert [(before, after, applied) for before, after, applied, _note in history(involve)] == [
        ("pending", "approved", True)
    ]


def test_a_first_postback_already_approved_becomes_the_original(client, involve):
    _created, approved = fixture_queries("involve_asia", "lifecycle_approve")[:2]
    assert client.get(ENDPOINT + approved).json()["status"] == "success"
    row = partner_rows(involve).get()
    assert (row.status, row.is_duplicate, row.processing_error) == ("approved", False, None)
    assert history(involve) == []
