"""A run against stored data with planted differences; recording and applying, twice."""

import csv
import io
from decimal import Decimal
from urllib.parse import parse_qsl, urlencode

import pytest

from conversions.ingest.hooks import decision_listener, decision_listener_remove
from conversions.models import ConversionChange
from reconciliation.models import ReconciliationRow, ReconciliationRun, ReportSource
from reconciliation.services import (
    REPORT_MARK_HEADER,
    RecoveryRefused,
    reconciliation_run,
    run_missing_record,
    run_report_apply,
)
from tests.conftest import fixture_queries, partner_rows

ENDPOINT = "/partner/involve/event?"
# A real InvolveAsia postback (pending, 2025-03-01 10:00:00): every planted row starts from it.
BASE = dict(parse_qsl(fixture_queries("involve_asia", "lifecycle_approve")[0]))
DAYS = {"date_from": "2025-03-01", "date_to": "2025-03-02"}


def params(conversion_id: str, **changes: str) -> dict[str, str]:
    return {**BASE, "conversion_id": conversion_id, **changes}


# What we received, and what the network's report says (its columns named like the macros).
RECEIVED = [
    params("IA-1"),
    params("IA-2"),
    params("IA-3"),
    params("IA-4"),
    params("IA-5"),
    params("IA-6", datetime_conversion="2025-03-02 23:30:00"),  # the partner's last day: in range
    params("IA-7", datetime_conversion="2025-03-03 00:30:00"),  # UTC 03-02 16:30, but its next day
    params("IA-11", conversion_status="approved"),
]
REPORTED = [
    params("IA-1"),
    params("IA-2", usd_payout="4.68"),  # a cent off: the same amount
    params("IA-3", conversion_status="approved"),
    params("IA-4", usd_payout="5.17", offer_name="Shopee MY, Mall"),
    params("IA-5", conversion_currency="SGD"),
    params("IA-9", aff_sub="s9"),
    params("IA-10", conversion_status="approved"),
    params("IA-11", conversion_status="pending"),  # would roll an approved one back
]
EXPECTED = {
    "IA-1": "matched",
    "IA-2": "matched",
    "IA-3": "status_differs",
    "IA-4": "amount_differs",
    "IA-5": "currency_differs",
    "IA-6": "missing_there",
    "IA-9": "missing_here",
    "IA-10": "missing_here",
    "IA-11": "status_differs",
}


def csv_file(records: list[dict[str, str]], *, delimiter: str = ";", bom: bool = True) -> io.BytesIO:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(records[0]), delimiter=delimiter)
    writer.writeheader()
    writer.writerows(records)
    return io.BytesIO(("\ufeff" if bom else "").encode() + text.getvalue().encode())


@pytest.fixture
def partner(make_partner):
    return make_partner("involve_asia", timezone="Asia/Kuala_Lumpur")


@pytest.fixture
def source(partner):
    return ReportSource.objects.create(partner=partner, name="Monthly CSV", kind="csv")


@pytest.fixture
def announced():
    seen = []

    def listener(announcement):
        seen.append((announcement.event, announcement.source, announcement.conversion["conversion_id"]))
        return []

    decision_listener(listener)
    yield seen
    decision_listener_remove(listener)


def run_of(source, records, **options):
    return reconciliation_run(source=source, upload=csv_file(records, **options), **_days())


def _days():
    import datetime

    return {name: datetime.date.fromisoformat(value) for name, value in DAYS.items()}


def kinds(run, partner):
    rows = ReconciliationRow.objects.using(partner.database_alias).filter(run_id=run.pk)
    return dict(rows.values_list("conversion_id", "kind"))


def snapshot(partner):
    alias = partner.database_alias
    conversions = list(
        partner_rows(partner).values_list(
            "conversion_id", "is_duplicate", "status", "usd_earning", "currency", "updated_at"
        )
    )
    changes = list(ConversionChange.objects.using(alias).order_by("id").values_list("id", "applied", "source"))
    return conversions, changes


def test_a_run_finds_exactly_the_planted_differences_and_recovery_is_idempotent(client, partner, source, announced):
    for received in RECEIVED:
        assert client.get(ENDPOINT + urlencode(received)).json()["status"] == "success"
    announced.clear()

    run = run_of(source, REPORTED)

    assert (run.state, run.error, run.report_rows) == ("done", "", len(REPORTED))
    assert kinds(run, partner) == EXPECTED
    assert run.counts == {
        "missing_here": 2,
        "missing_there": 1,
        "status_differs": 2,
        "amount_differs": 1,
        "currency_differs": 1,
        "matched": 2,
    }
    row = ReconciliationRow.objects.using(partner.database_alias).get(run_id=run.pk, conversion_id="IA-4")
    assert row.differences == {"usd_earning": ["4.67", "5.17"]}
    assert row.report_data["offer_name"] == "Shopee MY, Mall"
    source.refresh_from_db()
    assert source.last_run_counts == run.counts and source.last_run_error == ""

    # Record the missing ones: through the postback's decision, marked, announced; twice.
    assert run_missing_record(partner=partner, run=run) == {"recorded": 2}
    recorded = partner_rows(partner).get(conversion_id="IA-9")
    assert (recorded.is_duplicate, recorded.status, recorded.sub_id, recorded.usd_earning) == (
        False,
        "pending",
        "s9",
        Decimal("4.67"),
    )
    assert recorded.raw_data == REPORTED[5]
    assert recorded.request_headers == {REPORT_MARK_HEADER: f"reconciliation run {run.pk}"}
    before = snapshot(partner)
    assert run_missing_record(partner=partner, run=run) == {}
    assert snapshot(partner) == before

    # Apply the report: through the lifecycle rules, history marked as the report's; twice.
    assert run_report_apply(partner=partner, run=run) == {"updated": 2, "currency kept": 1, "stale": 1}
    by_id = {c.conversion_id: c for c in partner_rows(partner).filter(is_duplicate=False)}
    assert by_id["IA-3"].status == "approved"
    assert by_id["IA-4"].usd_earning == Decimal("5.17")
    assert by_id["IA-5"].currency == "MYR"  # a report never changes our currency
    assert by_id["IA-11"].status == "approved"  # a late pending never rolls back
    history = ConversionChange.objects.using(partner.database_alias)
    assert sorted(history.values_list("conversion__conversion_id", "applied", "source")) == [
        ("IA-11", False, "report"),
        ("IA-3", True, "report"),
        ("IA-4", True, "report"),
    ]
    before = snapshot(partner)
    assert run_report_apply(partner=partner, run=run) == {}
    assert run_missing_record(partner=partner, run=run) == {}
    assert snapshot(partner) == before
    stored = ReconciliationRun.objects.using(partner.database_alias).get(pk=run.pk)
    assert (stored.recorded, stored.applied) == (2, 2)

    # Both announced like any other change, so forwarding to publishers fires.
    assert sorted(announced) == [
        ("changed", "report", "IA-3"),
        ("changed", "report", "IA-4"),
        ("recorded", "report", "IA-10"),
        ("recorded", "report", "IA-9"),
    ]

    # The postback that never arrived arrives after all: a duplicate, never a second original.
    answer = client.get(ENDPOINT + urlencode(REPORTED[5])).json()
    assert answer["status"] == "duplicate"
    assert partner_rows(partner).filter(conversion_id="IA-9", is_duplicate=False).count() == 1

    # Reconciled again: only what the report cannot fix is left.
    again = run_of(source, REPORTED)
    assert again.counts == {
        "missing_here": 0,
        "missing_there": 1,
        "status_differs": 1,
        "amount_differs": 0,
        "currency_differs": 1,
        "matched": 6,
    }


def test_a_postback_arriving_before_the_record_makes_the_report_row_a_duplicate(client, partner, source):
    run = run_of(source, [params("IA-20")])
    assert run.counts["missing_here"] == 1
    assert client.get(ENDPOINT + urlencode(params("IA-20"))).json()["status"] == "success"

    assert run_missing_record(partner=partner, run=run) == {"duplicate": 1}

    originals = partner_rows(partner).filter(conversion_id="IA-20", is_duplicate=False)
    assert originals.count() == 1
    assert partner_rows(partner).filter(conversion_id="IA-20").count() == 2


@pytest.mark.parametrize("backend", ["postgres"])
def test_a_comma_separated_file_without_bom_and_the_sources_column_mapping(partner, source):
    source.column_mapping = {"usd_earning": "Payout (USD)", "conversion_id": "Conversion ID"}
    source.save()
    records = [
        {**params("IA-30"), "Payout (USD)": "7.00", "Conversion ID": "IA-30"},
    ]
    for record in records:
        del record["usd_payout"], record["conversion_id"]
    run = run_of(source, records, delimiter=",", bom=False)
    assert run.state == "done", run.error
    row = ReconciliationRow.objects.using(partner.database_alias).get(run_id=run.pk)
    assert (row.conversion_id, row.kind, row.usd_earning) == ("IA-30", "missing_here", Decimal("7.00"))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            lambda: csv_file([params("IA-40"), params("IA-41"), params("IA-42", usd_payout="abc")]),
            "line 4: usd_earning",
        ),
        (lambda: io.BytesIO(b"conversion_id,usd_payout\nIA-40,1\nIA-41,1,2\n"), "line 3: 3 fields"),
    ],
)
def test_a_malformed_file_fails_the_run_naming_the_row_and_imports_nothing(partner, source, content, message):
    run = reconciliation_run(source=source, upload=content(), **_days())

    assert run.state == "failed"
    assert message in run.error
    assert run.counts == {} and run.report_rows == 0
    assert not ReconciliationRow.objects.using(partner.database_alias).filter(run_id=run.pk).exists()
    source.refresh_from_db()
    assert message in source.last_run_error
    with pytest.raises(RecoveryRefused):
        run_missing_record(partner=partner, run=run)
    assert not partner_rows(partner).exists()


def test_a_conversion_listed_twice_in_the_report_keeps_its_first_row(partner, source):
    run = run_of(source, [params("IA-50"), params("IA-51"), params("IA-50", conversion_status="approved")])

    assert run.report_rows == 3
    rows = ReconciliationRow.objects.using(partner.database_alias).filter(run_id=run.pk)
    assert sorted(rows.values_list("conversion_id", "status", "report_line")) == [
        ("IA-50", "pending", 2),
        ("IA-51", "pending", 3),
    ]


def test_a_run_cut_off_by_a_crash_is_failed_by_the_next_one(partner, source):
    import datetime

    from django.utils import timezone

    alias = partner.database_alias
    now = timezone.now()
    cut_off = ReconciliationRun.objects.using(alias).create(
        partner_id=partner.pk,
        date_from=_days()["date_from"],
        date_to=_days()["date_to"],
        started_at=now - datetime.timedelta(hours=2),
        progress_at=now - datetime.timedelta(minutes=20),
    )
    ReconciliationRow.objects.using(alias).create(run=cut_off, conversion_id="IA-70", kind="missing_here", rank=0)
    busy = ReconciliationRun.objects.using(alias).create(
        partner_id=partner.pk, date_from=_days()["date_from"], date_to=_days()["date_to"], progress_at=now
    )

    run = run_of(source, [params("IA-71")])

    assert run.state == "done"
    cut_off.refresh_from_db(using=alias)
    assert cut_off.state == "failed"
    assert cut_off.error.startswith("interrupted: nothing stored since ")
    assert cut_off.error.endswith("its process stopped; start a new run")
    assert not ReconciliationRow.objects.using(alias).filter(run_id=cut_off.pk).exists()
    with pytest.raises(RecoveryRefused):
        run_missing_record(partner=partner, run=cut_off)
    busy.refresh_from_db(using=alias)
    assert busy.state == "running"  # still showing signs of life: another process's


def test_an_error_during_a_run_fails_it_rather_than_leave_it_running(partner, source, monkeypatch):
    from reconciliation import services

    def broken(**kwargs):
        raise RuntimeError("comparison broke")

    monkeypatch.setattr(services, "report_row_compare", broken)
    with pytest.raises(RuntimeError):
        run_of(source, [params("IA-72")])

    run = ReconciliationRun.objects.using(partner.database_alias).get()
    assert (run.state, run.error) == ("failed", "interrupted: RuntimeError: comparison broke; start a new run")
    assert run.finished_at is not None
    assert not ReconciliationRow.objects.using(partner.database_alias).filter(run_id=run.pk).exists()
