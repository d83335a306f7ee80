"""Concurrent postbacks: the database, not the code, decides which one is the original."""

from collections import Counter

from django.test import Client

from tests.conftest import partner_rows, run_concurrently


def test_fifty_identical_postbacks_give_one_original_and_49_duplicates(involve):
    url = "/partner/involve/event?conversion_id=race-1&aff_sub=s&usd_payout=1.00"

    responses = run_concurrently(lambda _i: Client().get(url), 50)

    assert [r for r in responses if isinstance(r, Exception)] == []
    assert Counter(r.status_code for r in responses) == {200: 50}
    assert Counter(r.json()["status"] for r in responses) == {"success": 1, "duplicate": 49}
    rows = list(partner_rows(involve))
    originals = [row for row in rows if not row.is_duplicate]
    assert len(rows) == 50 and len(originals) == 1
    assert {row.duplicate_of_id for row in rows if row.is_duplicate} == {originals[0].pk}


def test_concurrent_distinct_postbacks_are_all_stored(involve):
    responses = run_concurrently(
        lambda i: Client().get(f"/partner/involve/event?conversion_id=many-{i % 20}&aff_sub={i}"), 40
    )

    assert [r for r in responses if isinstance(r, Exception)] == []
    assert Counter(r.json()["status"] for r in responses) == {"success": 20, "duplicate": 20}
    assert partner_rows(involve).filter(is_duplicate=False).count() == 20
    assert partner_rows(involve).count() == 40
