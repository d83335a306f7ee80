"""The dashboards' numbers are docs/numbers.md's definitions, computed here in plain SQL on PostgreSQL.

Every headline card and every cell of the per-day table is compared with a query written
from the documented definitions alone (no selector code): approved = approved or paid,
pending = pending or no status, rejected = the network's rejected; originals only; days
of conversion time (the dashboards' default) in UTC.
"""

import csv
import io
import random
import re
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import connections

from conversions.models import PartnerConversion

START, END = date(2025, 3, 1), date(2025, 3, 7)
QUERY = f"start={START}&end={END}"  # conversion time: the default

DEFINITIONS = """
WITH rows AS (
    SELECT *, NOT is_duplicate AND processing_error IS NULL AS original
    FROM partner_conversions
    WHERE conversion_datetime >= %(start)s AND conversion_datetime < %(end)s
)
SELECT {group}
    count(*) FILTER (WHERE original),
    count(*) FILTER (WHERE is_duplicate AND processing_error IS NULL),
    count(*) FILTER (WHERE processing_error IS NOT NULL),
    coalesce(sum(usd_sale_amount) FILTER (WHERE original AND status IN ('approved', 'paid')), 0),
    coalesce(sum(usd_sale_amount) FILTER (WHERE original AND (status IS NULL OR status = 'pending')), 0),
    coalesce(sum(usd_sale_amount) FILTER (WHERE original AND status = 'rejected'), 0),
    coalesce(sum(usd_earning) FILTER (WHERE original AND (status IS NULL OR status <> 'rejected')), 0),
    count(*) FILTER (WHERE original AND status IN ('approved', 'paid')),
    count(*) FILTER (WHERE original AND status = 'rejected')
FROM rows {group_by}
"""


@pytest.fixture
def backend() -> str:
    return "postgres"


@pytest.fixture
def hostile(involve):
    """Hundreds of rows: every status and none, duplicates, invalid postbacks, rows outside the
    range on either side, a conversion received weeks later, near-midnight times, big amounts."""
    rng = random.Random(5)
    rows = []
    for n in range(600):
        converted = datetime(2025, 2, 27, tzinfo=UTC) + timedelta(minutes=rng.randint(0, 11 * 24 * 60))
        kind = rng.random()
        rows.append(
            PartnerConversion(
                partner_id=involve.pk,
                conversion_id=f"c{n}",
                offer_id=str(rng.randint(1, 14)),
                offer_name="Ø" * 60 if n % 50 == 0 else f"Offer {n % 14}",
                status=rng.choice(["approved", "paid", "pending", "rejected", None]),
                is_duplicate=kind < 0.1,
                processing_error="usd_sale_amount: bad" if 0.1 <= kind < 0.15 else None,
                usd_sale_amount=Decimal(rng.randint(1, 99_999_999)) / 100,
                usd_earning=Decimal(rng.randint(1, 9_999_999)) / 100,
                sub_id=f"SUB{rng.randint(1, 30)}",
                conversion_datetime=converted,
                received_at=converted + timedelta(days=rng.choice([0, 0, 0, 20])),
            )
        )
    PartnerConversion.objects.using(involve.database_alias).bulk_create(rows)
    return involve


def sql(partner, group: str = "", group_by: str = "") -> list[tuple]:
    bounds = {
        "start": datetime(START.year, START.month, START.day, tzinfo=UTC),
        "end": datetime(END.year, END.month, END.day, tzinfo=UTC) + timedelta(days=1),
    }
    with connections[partner.database_alias].cursor() as cursor:
        cursor.execute(DEFINITIONS.format(group=group, group_by=group_by), bounds)
        return cursor.fetchall()


def test_headlines_and_the_day_table_equal_the_documented_sql(analyst_client, hostile):
    url = f"/admin/partners/partner/{hostile.pk}/dashboard/?{QUERY}"
    response = analyst_client.get(url)
    assert response.status_code == 200
    cards = dict(re.findall(r'data-total="(\w+)" data-value="([^"]*)"', response.content.decode()))
    (originals, duplicates, invalid, approved, pending, rejected, earnings, n_approved, n_rejected) = sql(hostile)[0]
    assert originals > 200 and rejected > 0  # the data has every kind
    assert cards["originals"] == str(originals)
    assert cards["duplicates"] == str(duplicates)
    assert cards["invalid"] == str(invalid)
    assert Decimal(cards["approved_usd_sale_amount"]) == approved
    assert Decimal(cards["pending_usd_sale_amount"]) == pending
    assert Decimal(cards["network_rejected_usd_sale_amount"]) == rejected
    assert Decimal(cards["open_usd_earning"]) == earnings
    assert Decimal(cards["approval_rate"]) == (Decimal(n_approved) / originals).quantize(Decimal("0.0001"))
    assert Decimal(cards["rejection_rate"]) == (Decimal(n_rejected) / originals).quantize(Decimal("0.0001"))
    assert f"USD {approved:,.2f}" in response.content.decode()

    exported = list(csv.reader(io.StringIO(analyst_client.get(f"{url}&export=table-days").content.decode())))
    by_day = sql(hostile, "(conversion_datetime AT TIME ZONE 'UTC')::date,", "GROUP BY 1 ORDER BY 1 DESC")
    assert [row[0] for row in exported[1:-1]] == [day.isoformat() for day, *_ in by_day]  # newest first
    assert [[Decimal(value) for value in row[1:]] for row in exported[1:-1]] == [
        [Decimal(value) for value in values[1:8]] for values in by_day
    ]
    assert [Decimal(value) for value in exported[-1][1:]] == [Decimal(value) for value in sql(hostile)[0][:7]]


def test_the_stats_api_says_the_same(analyst_client, hostile):
    from django.contrib.auth.models import User
    from rest_framework.authtoken.models import Token

    token = Token.objects.create(user=User.objects.get(username="analyst")).key
    body = analyst_client.get(
        f"/partner/involve/event/stats?from={START}&to={END}&time_field=conversion_datetime",
        HTTP_AUTHORIZATION=f"Token {token}",
    ).json()
    originals, _, _, approved, pending, rejected, earnings, n_approved, _ = sql(hostile)[0]
    summary = body["summary"]
    assert summary["originals"] == body["totals"]["originals"] == originals
    assert Decimal(summary["approved"]["usd_sale_amount"]) == approved
    assert Decimal(summary["pending"]["usd_sale_amount"]) == pending
    assert Decimal(summary["network_rejected"]["usd_sale_amount"]) == rejected
    assert Decimal(summary["open_usd_earning"]) == earnings
    assert summary["approved"]["originals"] == n_approved
    # The old total still counts every original's sale, rejected ones included.
    assert Decimal(body["totals"]["usd_sale_amount"]) == approved + pending + rejected
    assert (
        "request_digests"
        not in analyst_client.get(
            "/partner/involve/event/conversions?limit=1", HTTP_AUTHORIZATION=f"Token {token}"
        ).json()["results"][0]
    )
