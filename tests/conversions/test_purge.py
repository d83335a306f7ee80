"""`purge_conversions`: each partner's retention, in batches, per partner database."""

import io
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from conversions.models import DailyCounter, PartnerConversion
from conversions.retention import conversions_purge
from tests.conftest import partner_rows


def add_rows(partner, *, days_ago: float, count: int, prefix: str) -> list[PartnerConversion]:
    received = timezone.now() - timedelta(days=days_ago)
    rows = [
        PartnerConversion(partner_id=partner.pk, conversion_id=f"{prefix}{i}", received_at=received, is_processed=True)
        for i in range(count)
    ]
    return PartnerConversion.objects.using(partner.database_alias).bulk_create(rows)


def purge(*args: str) -> str:
    out = io.StringIO()
    call_command("purge_conversions", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def test_deletes_only_rows_older_than_each_partners_retention(make_partner):
    involve = make_partner("involve_asia", data_retention_days=30)
    rector = make_partner("rector", data_retention_days=7)
    add_rows(involve, days_ago=31, count=5, prefix="old")
    add_rows(involve, days_ago=10, count=3, prefix="mid")
    add_rows(rector, days_ago=10, count=4, prefix="old")
    add_rows(rector, days_ago=1, count=2, prefix="new")

    output = purge("--batch-size", "2")

    assert sorted(partner_rows(involve).values_list("conversion_id", flat=True)) == ["mid0", "mid1", "mid2"]
    assert sorted(partner_rows(rector).values_list("conversion_id", flat=True)) == ["new0", "new1"]
    assert "involve_asia (involve_asia_db): deleted 5 conversion(s) in 3 batch(es)" in output
    assert "rector (rector_db): deleted 4 conversion(s) in 2 batch(es)" in output
    assert "retention 7 days" in output
    assert "purge_conversions: deleted 9 conversion(s) in total" in output


def test_dry_run_counts_and_deletes_nothing(make_partner):
    involve = make_partner("involve_asia", data_retention_days=30)
    add_rows(involve, days_ago=40, count=4, prefix="old")
    add_rows(involve, days_ago=1, count=1, prefix="new")

    output = purge("--dry-run")

    assert "involve_asia (involve_asia_db): would delete 4 conversion(s)" in output
    assert "would delete 4 conversion(s) in total" in output
    assert partner_rows(involve).count() == 5


def test_partner_option_limits_the_purge(make_partner):
    involve = make_partner("involve_asia", data_retention_days=1)
    rector = make_partner("rector", data_retention_days=1)
    add_rows(involve, days_ago=5, count=2, prefix="i")
    add_rows(rector, days_ago=5, count=2, prefix="r")

    output = purge("--partner", "rector")

    assert "involve_asia" not in output
    assert partner_rows(involve).count() == 2 and partner_rows(rector).count() == 0
    with pytest.raises(CommandError, match="unknown partner"):
        purge("--partner", "nobody")


def test_duplicates_of_a_purged_original_are_unlinked_not_broken(make_partner):
    involve = make_partner("involve_asia", data_retention_days=30)
    (original,) = add_rows(involve, days_ago=31, count=1, prefix="o")
    recent = PartnerConversion(
        partner_id=involve.pk, conversion_id="o0", is_duplicate=True, duplicate_of_id=original.pk
    )
    recent.save(using=involve.database_alias)

    result = conversions_purge(partner=involve, batch_size=10)

    assert result.conversions == 1
    survivor = partner_rows(involve).get()
    assert survivor.pk == recent.pk and survivor.duplicate_of_id is None


def test_old_daily_counters_go_too(make_partner):
    involve = make_partner("involve_asia", data_retention_days=30)
    today = timezone.now().date()
    for days in (40, 1):
        DailyCounter(partner_id=involve.pk, day=today - timedelta(days=days), name="requests", count=5).save(
            using=involve.database_alias
        )
    result = conversions_purge(partner=involve)
    assert result.counters == 1
    assert list(DailyCounter.objects.using(involve.database_alias).values_list("day", flat=True)) == [
        today - timedelta(days=1)
    ]


def test_an_unreachable_partner_database_is_reported_and_the_others_purged(make_partner):
    from partners.services import partner_create

    involve = make_partner("involve_asia", data_retention_days=1)
    add_rows(involve, days_ago=3, count=2, prefix="i")
    partner_create(
        partner_code="down",
        partner_name="Down",
        endpoint_path="/down/event",
        database_name="down_db",
        database_url="postgres://root@127.0.0.1:1/unreachable",
    )
    err = io.StringIO()
    with pytest.raises(CommandError, match="could not purge: down"):
        call_command("purge_conversions", stdout=io.StringIO(), stderr=err)
    assert "down (down_db): FAILED" in err.getvalue()
    assert partner_rows(involve).count() == 0
