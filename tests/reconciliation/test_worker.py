"""Runs off the request: queued runs and daily schedules performed by the background worker's
jobs (reconciliation/runs.py, hosted by infra/jobs.py), with a controllable clock; two
workers side by side do each run and each recording once."""

import datetime
import threading
import zoneinfo

import pytest

from conversions.models import PartnerConversion
from infra.jobs import BackgroundJobs, background_jobs
from reconciliation.models import ReconciliationRow, ReconciliationRun, ReportSource
from reconciliation.runs import run_queue, runs_tick, schedules_tick
from reconciliation.sources import ReportRow
from tests.conftest import partner_rows, run_concurrently

ZONE = zoneinfo.ZoneInfo("Asia/Kuala_Lumpur")
TODAY = datetime.date(2025, 3, 10)


def record(number: int, **fields) -> dict:
    """A report record as InvolveAsia's API publishes it."""
    return {
        "conversion_id": 9000 + number,
        "offer_id": 77,
        "offer_name": "Shopee MY",
        "sale_amount": "100.00",
        "payout": "5.00",
        "currency": "MYR",
        "aff_sub1": f"RAMPUP{number}",
        "datetime_conversion": f"{TODAY - datetime.timedelta(days=1)} 10:00:0{number % 10}",
        "conversion_status": "pending",
        **fields,
    }


REPORT = [record(n) for n in range(1, 6)]


@pytest.fixture
def reported(monkeypatch):
    """The network's report, as the source reads it (the reading itself is tested with the fake API)."""
    calls = []

    def rows(*, source, date_from, date_to, upload=None):
        calls.append((date_from, date_to))
        return iter([ReportRow(line=n, values=values, place="record", page=1) for n, values in enumerate(REPORT, 1)])

    monkeypatch.setattr("reconciliation.services.source_report_rows", rows)
    return calls


def scheduled_source(partner, **fields) -> ReportSource:
    partner.timezone = "Asia/Kuala_Lumpur"
    partner.save(update_fields=["timezone"])
    values = {
        "partner": partner,
        "name": "InvolveAsia API",
        "kind": "involve_asia",
        "base_url": "http://127.0.0.1:9/api",
        "api_key": "k",
        "api_secret": "s",
        "schedule_daily": True,
        "schedule_at": datetime.time(6, 0),
        "schedule_days": 3,
        **fields,
    }
    return ReportSource.objects.create(**values)


def at(hour: int, minute: int = 0, day: datetime.date = TODAY):
    moment = datetime.datetime.combine(day, datetime.time(hour, minute), tzinfo=ZONE)
    return lambda: moment


def runs(partner):
    return ReconciliationRun.objects.using(partner.database_alias).order_by("pk")


def drain() -> int:
    performed = 0
    while runs_tick(threading.Event()):
        performed += 1
    return performed


@pytest.mark.parametrize("backend", ["sqlite"])
def test_the_daily_run_is_queued_at_its_time_once_a_day_and_performed_by_the_worker(involve, reported):
    source = scheduled_source(involve)
    stopping = threading.Event()

    schedules_tick(stopping, clock=at(5, 59))
    assert not runs(involve).exists()  # not yet 06:00 in the partner's time zone

    schedules_tick(stopping, clock=at(6, 0))
    schedules_tick(stopping, clock=at(6, 5))
    (run,) = runs(involve)
    assert (run.state, run.trigger, run.date_from, run.date_to) == (
        "queued",
        "schedule",
        TODAY - datetime.timedelta(days=2),
        TODAY,
    )
    source.refresh_from_db()
    assert source.scheduled_through == TODAY and source.queued_at is not None

    assert drain() == 1
    run.refresh_from_db()
    assert run.state == "done" and run.rows_read == 5 and run.counts["missing_here"] == 5
    assert run.recorded == 0 and not partner_rows(involve).exists()  # automatic recovery is off by default
    source.refresh_from_db()
    assert source.queued_at is None and source.last_run_at is not None

    schedules_tick(stopping, clock=at(6, 0, TODAY + datetime.timedelta(days=1)))
    assert runs(involve).count() == 2  # the next day's run


@pytest.mark.parametrize("backend", ["postgres"])
def test_two_workers_queue_the_daily_run_once_and_record_each_missing_conversion_once(involve, reported):
    scheduled_source(involve, auto_record_missing=True)
    clock = at(6, 1)

    def worker(_index: int) -> int:
        stopping = threading.Event()
        schedules_tick(stopping, clock=clock)
        performed = 0
        while runs_tick(stopping, worker=f"worker-{_index}"):
            performed += 1
        return performed

    performed = run_concurrently(worker, 2)
    assert sorted(performed) == [0, 1], performed
    (run,) = runs(involve)
    assert run.state == "done" and run.record_missing and run.recorded == 5
    originals = PartnerConversion.objects.using(involve.database_alias).filter(is_duplicate=False)
    assert sorted(originals.values_list("conversion_id", flat=True)) == [str(9000 + n) for n in range(1, 6)]
    actions = set(ReconciliationRow.objects.using(involve.database_alias).values_list("action", flat=True))
    assert actions == {"recorded"}
    # Another pass of both workers (and the same day's schedule) does nothing more.
    assert run_concurrently(worker, 2) == [0, 0]
    assert runs(involve).count() == 1 and originals.count() == 5


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_run_cut_off_by_the_worker_stopping_is_queued_again_and_finished_by_the_next(involve, reported, monkeypatch):
    import reconciliation.services as services

    source = scheduled_source(involve, schedule_daily=False)
    run = run_queue(source=source, date_from=TODAY, date_to=TODAY)
    stopping = threading.Event()
    monkeypatch.setattr(services, "BATCH_SIZE", 2)
    compare = services._report_compare

    def stop_after_first_batch(**kwargs):
        rows = kwargs["rows"]

        def rows_then_stop():
            for number, row in enumerate(rows, 1):
                if number == 3:
                    stopping.set()
                yield row

        return compare(**{**kwargs, "rows": rows_then_stop()})

    monkeypatch.setattr(services, "_report_compare", stop_after_first_batch)
    assert runs_tick(stopping) is False
    run.refresh_from_db(using=involve.database_alias)
    assert run.state == "queued" and not ReconciliationRow.objects.using(involve.database_alias).exists()

    monkeypatch.setattr(services, "_report_compare", compare)
    assert drain() == 1
    run.refresh_from_db(using=involve.database_alias)
    assert run.state == "done" and run.report_rows == 5


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_csv_uploaded_with_a_run_is_kept_in_pieces_until_the_worker_has_read_it(involve, monkeypatch):
    from reconciliation.models import ReportUpload

    monkeypatch.setattr(ReportUpload, "CHUNK_BYTES", 64)
    source = ReportSource.objects.create(partner=involve, name="CSV", kind="csv")
    lines = ["conversion_id,conversion_status,datetime_conversion"]
    lines += [f"IA-{n},pending,2025-03-01 10:00:00" for n in range(40)]
    content = ("\n".join(lines) + "\n").encode()
    import io

    run = run_queue(
        source=source,
        date_from=datetime.date(2025, 3, 1),
        date_to=datetime.date(2025, 3, 1),
        upload=io.BytesIO(content),
        upload_name="report.csv",
    )
    pieces = ReportUpload.objects.using(involve.database_alias).filter(run_id=run.pk)
    assert run.upload_bytes == len(content) and pieces.count() == -(-len(content) // 64)
    assert drain() == 1
    run.refresh_from_db(using=involve.database_alias)
    assert run.state == "done" and run.report_rows == 40 and run.counts["missing_here"] == 40
    assert not pieces.exists()  # gone once read


def test_the_worker_hosts_the_reconciliation_jobs_and_stops_them():
    names = {job.name for job in background_jobs()}
    assert {"reconciliation.runs", "reconciliation.schedules"} <= names
    calls = []
    from infra.jobs import BackgroundJob

    def tick(stopping):
        calls.append(threading.current_thread().name)
        raise RuntimeError("a failing tick is logged, and the job goes on")

    jobs = BackgroundJobs([BackgroundJob(name="t", every=0.01, tick=tick, threads=2)])
    jobs.start()
    deadline = threading.Event()
    deadline.wait(0.2)
    jobs.stop(timeout=2)
    assert len(calls) > 2 and {name for name in calls} == {"job-t-1", "job-t-2"}
    assert not any(thread.is_alive() for thread in jobs.threads)


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_worker_exiting_in_the_middle_of_a_run_queues_it_again(involve, monkeypatch):
    """A run whose worker exits before its current step ends (an API page still awaited)
    goes back to the queue; the next worker performs it from the start."""
    from reconciliation.runs import jobs_register

    source = scheduled_source(involve, schedule_daily=False)
    release, reading = threading.Event(), threading.Event()

    def slow_report(*, source, date_from, date_to, upload=None):
        yield ReportRow(line=1, values=REPORT[0], place="record", page=1)
        reading.set()
        release.wait(10)  # the next page never comes before the worker exits
        yield from (ReportRow(line=n, values=v, place="record", page=1) for n, v in enumerate(REPORT[1:], 2))

    monkeypatch.setattr("reconciliation.services.source_report_rows", slow_report)
    monkeypatch.setattr("reconciliation.services.BATCH_SIZE", 1)
    jobs_register()
    job = next(job for job in background_jobs() if job.name == "reconciliation.runs")
    run = run_queue(source=source, date_from=TODAY, date_to=TODAY)
    jobs = BackgroundJobs([job])
    jobs.start()
    assert reading.wait(10)
    jobs.stop(timeout=0.2)
    run.refresh_from_db(using=involve.database_alias)
    assert run.state == "queued"
    release.set()
    for thread in jobs.threads:
        thread.join(10)

    monkeypatch.setattr(
        "reconciliation.services.source_report_rows",
        lambda **kw: iter([ReportRow(line=n, values=v, place="record", page=1) for n, v in enumerate(REPORT, 1)]),
    )
    assert drain() == 1
    run.refresh_from_db(using=involve.database_alias)
    assert run.state == "done" and run.report_rows == 5
    assert ReconciliationRow.objects.using(involve.database_alias).filter(run_id=run.pk).count() == 5
