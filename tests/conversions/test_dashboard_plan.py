"""The dashboard's per-day groups on PostgreSQL: the planner knows how few groups there are.

Without statistics on the grouped expressions PostgreSQL expects about one group per
row, plans a serial hash aggregate sized for that and spills it to disk on a big range
(1.2 s for 1,000,000 rows). Migration 0008's statistics must match the expressions
`conversion_day_groups` really groups by, or they are ignored: this reads the plan.
"""

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import connections

from conversions.models import PartnerConversion
from conversions.selectors import TimeRange, conversion_day_groups

START = datetime(2025, 3, 1, tzinfo=UTC)
DAYS, OFFERS, STATUSES = 6, 5, ("approved", "pending", "rejected")


@pytest.fixture
def backend() -> str:
    return "postgres"


def expected_groups(queryset) -> int:
    """How many groups the top aggregate of the queryset's plan expects."""
    plan = json.loads(queryset.explain(format="json"))[0]["Plan"]
    while plan["Node Type"] != "Aggregate":
        plan = plan["Plans"][0]
    return plan["Plan Rows"]


@pytest.mark.parametrize("time_field", ["received_at", "conversion_datetime"])
def test_the_planner_expects_the_groups_there_are(involve, time_field):
    rows = [
        PartnerConversion(
            partner_id=involve.pk,
            conversion_id=f"c-{n}",
            offer_id=str(n % OFFERS),
            status=STATUSES[n % len(STATUSES)],
            is_duplicate=n % 50 == 0,
            usd_sale_amount=Decimal("10.00"),
            usd_earning=Decimal("1.00"),
            received_at=START + timedelta(minutes=n % (DAYS * 24 * 60)),
            conversion_datetime=START + timedelta(minutes=n % (DAYS * 24 * 60)),
        )
        for n in range(20_000)
    ]
    PartnerConversion.objects.using(involve.database_alias).bulk_create(rows, batch_size=5_000)
    with connections[involve.database_alias].cursor() as cursor:
        cursor.execute("ANALYZE partner_conversions")  # what autovacuum does after a load

    groups = conversion_day_groups(
        partner=involve, time_range=TimeRange(time_field=time_field, start=START, end=START + timedelta(days=DAYS))
    )
    actual = groups.count()
    expected = expected_groups(groups)

    # Without the statistics the estimate is the product of the columns' distinct counts,
    # capped near the row count: thousands here, against under two hundred real groups.
    assert actual <= DAYS * OFFERS * len(STATUSES) * 2
    assert expected <= 3 * actual, f"planner expects {expected} groups, there are {actual}"
