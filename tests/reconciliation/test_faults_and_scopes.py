"""Reconciliation under faults, concurrency, bad input and partner scopes: an uploaded report
never outlives its run, automatic recovery resumes after a failure, two recoveries of one run
record each conversion once, bad input is a message or a form error (never a 500), a scoped
user sees only its partners, stored credentials go only where they were typed for, a
deleted source's queued runs fail, and the csv module's process-wide limit is left alone."""

import contextlib
import csv
import datetime
import io
import threading

import pytest
from django.contrib.auth.models import Group, User
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from conversions.models import PartnerConversion
from infra.databases import PartnerDatabaseUnavailable
from partners.models import Partner, PartnerScope
from reconciliation.models import ReconciliationRow, ReconciliationRun, ReportSource, ReportUpload
from reconciliation.runs import run_queue, runs_tick
from tests.reconciliation.test_worker import TODAY, drain, scheduled_source
from tests.reconciliation.test_worker import reported as reported  # noqa: F401 - the fixture

CSV_BODY = b"conversion_id,conversion_status,datetime_conversion\nIA-1,pending,2025-03-01 10:00:00\n"


def csv_source(partner) -> ReportSource:
    return ReportSource.objects.create(partner=partner, name="CSV", kind="csv")


def scoped_manager(*partners) -> User:
    """An account manager limited (PartnerScope) to `partners` (none: no partner at all)."""
    user = User.objects.create_user("scoped", password="pw", is_staff=True)
    user.groups.add(Group.objects.get(name="Account managers"))
    PartnerScope.objects.create(user=user).partners.add(*partners)
    return user


def gone_partner() -> Partner:
    """A partner whose database does not answer."""
    return Partner.objects.create(
        partner_code="gone",
        partner_name="Gone",
        endpoint_path="/gone/event",
        database_name="gone_db",
        database_url="postgres://root@127.0.0.1:1/gone_db",
    )


# --- faults: the uploaded file outlives its run ------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite"])
def test_upload_pieces_are_deleted_when_a_run_is_interrupted(involve, monkeypatch):
    """docs: the upload is 'deleted when the run ends'. A run that ends interrupted (the
    database gone mid-run, a bug) keeps its pieces (up to 64 MiB) in the partner's database forever."""
    source = csv_source(involve)
    day = datetime.date(2025, 3, 1)
    run = run_queue(source=source, date_from=day, date_to=day, upload=io.BytesIO(CSV_BODY))

    def broken(**_kwargs):
        raise RuntimeError("the database went away mid-run")

    monkeypatch.setattr("reconciliation.services.rows_insert", broken)
    with pytest.raises(RuntimeError):
        runs_tick(threading.Event())
    run.refresh_from_db(using=involve.database_alias)
    assert run.state == "failed" and run.error.startswith("interrupted")
    assert not ReportUpload.objects.using(involve.database_alias).filter(run_id=run.pk).exists()


@pytest.mark.parametrize("backend", ["sqlite"])
def test_upload_pieces_are_deleted_when_a_killed_run_is_closed_as_stale(involve, reported):
    """A worker killed outright: the next run of the partner fails the stale run, but its upload stays."""
    from django.utils import timezone

    from reconciliation.runs import run_claim

    source = csv_source(involve)
    alias = involve.database_alias
    day = datetime.date(2025, 3, 1)
    killed = run_queue(source=source, date_from=day, date_to=day, upload=io.BytesIO(CSV_BODY))
    long_ago = timezone.now() - datetime.timedelta(hours=1)
    assert run_claim(alias=alias, run_id=killed.pk, worker="killed", now=long_ago)  # and then SIGKILL
    api = scheduled_source(involve, schedule_daily=False)
    run_queue(source=api, date_from=TODAY, date_to=TODAY)
    assert drain() == 1
    killed.refresh_from_db(using=alias)
    assert killed.state == "failed"
    assert not ReportUpload.objects.using(alias).filter(run_id=killed.pk).exists()


# --- faults: automatic recovery is at most once, not exactly once -------------------------


@pytest.mark.parametrize("backend", ["sqlite"])
def test_automatic_recovery_survives_a_failure_between_the_run_and_its_recording(involve, reported, monkeypatch):
    """docs: 'once such a run is done, its missing_here rows are recorded'. If recording
    fails once (a database blip, the worker killed right after the run is done), nothing
    ever records them: the run is done, record_missing is set, and no tick comes back to it."""
    import reconciliation.runs as runs_module

    scheduled_source(involve, schedule_daily=False, auto_record_missing=True)
    source = ReportSource.objects.get()
    run_queue(source=source, date_from=TODAY, date_to=TODAY, record_missing=True, trigger="schedule")
    real = runs_module.run_missing_record
    calls = []

    def blip(**kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise PartnerDatabaseUnavailable(involve.database_alias, "server closed the connection unexpectedly")
        return real(**kwargs)

    monkeypatch.setattr(runs_module, "run_missing_record", blip)
    runs_tick(threading.Event())  # the blip is swallowed by runs_tick ("queued runs wait")
    drain()
    drain()
    run = ReconciliationRun.objects.using(involve.database_alias).get()
    assert run.state == "done" and run.counts["missing_here"] == 5
    assert run.recorded == 5, f"automatic recovery never retried: recorded={run.recorded}, calls={len(calls)}"


# --- concurrency: two recoveries of one run at once ----------------------------------------


@pytest.mark.parametrize("backend", ["postgres"])
def test_two_concurrent_recordings_of_one_run_keep_recorded_and_store_no_extra_row(involve, reported, monkeypatch):
    """Two account managers (or the automatic recovery and a click) record the same run at
    once: both read the same pending rows; the second stores a *duplicate conversion row*
    and overwrites the row's action 'recorded' with 'duplicate', so the run says recorded=0
    although it recorded the conversion."""
    import reconciliation.services as services

    source = scheduled_source(involve, schedule_daily=False)
    run_queue(source=source, date_from=TODAY, date_to=TODAY)
    assert drain() == 1
    alias = involve.database_alias
    run = ReconciliationRun.objects.using(alias).get()
    # Keep one missing row, so the interleaving is exact.
    ReconciliationRow.objects.using(alias).exclude(conversion_id="9001").update(action="-")
    barrier = threading.Barrier(2, timeout=1)
    real_store = services.postback_store

    def store_together(**kwargs):
        # Both have read the row as pending; the one that claimed it waits for the other
        # (which waits on the row's lock instead, and then finds it taken).
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait()
        return real_store(**kwargs)

    monkeypatch.setattr(services, "postback_store", store_together)

    def recover(_index):
        return services.run_missing_record(partner=involve, run=run)

    from django.test import override_settings

    from tests.conftest import _run_concurrently

    with override_settings(DB_MAX_THREADS_PER_DATABASE=2, DB_MAX_CONNECTIONS=10):
        results = _run_concurrently(recover, 2)
    assert not any(isinstance(result, Exception) for result in results), results
    row = ReconciliationRow.objects.using(alias).get(conversion_id="9001")
    run.refresh_from_db(using=alias)
    stored = PartnerConversion.objects.using(alias).filter(conversion_id="9001")
    assert (row.action, run.recorded, stored.count()) == ("recorded", 1, 1), (results, row.action, run.recorded)


# --- bad input: every bad input a clear 4xx or form error, never a 500 ---------------------


@pytest.mark.parametrize("backend", ["sqlite"])
def test_recover_by_a_user_scoped_to_no_partner_is_not_a_500(involve, users):
    client = Client(raise_request_exception=False)
    client.force_login(scoped_manager())
    response = client.post("/admin/reconciliation/reconciliationrun/1/recover/", {"recover": "missing"})
    assert response.status_code < 500, response.status_code


def test_a_runs_csv_of_an_unreachable_partner_database_is_a_message_not_a_500(root_client_raw, gone):
    response = root_client_raw.get("/admin/reconciliation/reconciliationrun/1/csv/?partner=gone")
    assert response.status_code < 500, response.status_code


def test_recovering_a_run_of_an_unreachable_partner_database_is_a_message_not_a_500(root_client_raw, gone):
    response = root_client_raw.post(
        "/admin/reconciliation/reconciliationrun/1/recover/?partner=gone", {"recover": "missing"}
    )
    assert response.status_code < 500, response.status_code


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_run_ending_on_the_last_representable_day_is_a_form_error_not_a_crashed_run(involve, users):
    """The form accepts 9999-12-31; the worker then crashes computing the day after it
    (OverflowError): the run says 'interrupted: OverflowError ...; start a new run'."""
    client = Client()
    client.force_login(users["root"])
    source = csv_source(involve)
    response = client.post(
        f"/admin/reconciliation/reportsource/{source.pk}/reconcile/",
        {"date_from": "9999-12-31", "date_to": "9999-12-31", "report": SimpleUploadedFile("r.csv", CSV_BODY)},
    )
    if response.status_code == 302:
        with contextlib.suppress(Exception):  # what the worker's tick would log
            drain()
        run = ReconciliationRun.objects.using(involve.database_alias).get()
        pytest.fail(f"queued instead of a form error; the run ended {run.state}: {run.error}")
    assert response.status_code == 200


# --- security: what a user scoped to some partners sees --------------------------------------


@pytest.mark.parametrize("backend", ["sqlite"])
def test_the_sources_list_filter_does_not_name_partners_outside_the_users_scope(involve, rector, users):
    ReportSource.objects.create(partner=involve, name="CSV", kind="csv")
    client = Client()
    client.force_login(scoped_manager(involve))
    page = client.get("/admin/reconciliation/reportsource/").content.decode()
    assert "CSV" in page
    assert "rector" not in page.lower(), "the 'By partner' filter lists every partner, in scope or not"


@pytest.mark.parametrize("backend", ["sqlite"])
def test_repointing_the_base_url_does_not_send_the_stored_secret_elsewhere(involve, users):
    """The key and secret are 'write-only: never shown again'. Yet anyone who may edit the
    source can point its base URL at their own server and keep the stored credentials
    (empty fields 'keep them'); the next preview or run POSTs key and secret there."""
    source = ReportSource.objects.create(
        partner=involve,
        name="IA API",
        kind="involve_asia",
        base_url="https://api.involve.asia/api",
        api_key="real-key",
        api_secret="real-secret",
    )
    client = Client()
    client.force_login(users["manager"])
    client.post(
        f"/admin/reconciliation/reportsource/{source.pk}/change/",
        {
            "partner": involve.pk,
            "name": "IA API",
            "kind": "involve_asia",
            "is_active": "on",
            "column_mapping-TOTAL": "0",
            "base_url": "https://attacker.example/api",
            "api_key": "",
            "api_secret": "",
            "page_size": "100",
            "requests_per_minute": "60",
            "schedule_at": "06:00",
            "schedule_days": "7",
            "timeout_seconds": "30",
        },
    )
    source.refresh_from_db()
    assert not (source.base_url.startswith("https://attacker.example") and source.api_secret == "real-secret")


# --- a queued run nobody will ever take -----------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_queued_run_of_a_deleted_source_does_not_stay_queued_forever(involve, reported):
    source = scheduled_source(involve, schedule_daily=False)
    run = run_queue(source=source, date_from=TODAY, date_to=TODAY)
    source.delete()
    drain()
    run.refresh_from_db(using=involve.database_alias)
    assert run.state != "queued", "its page says 'waiting for the background worker' and reloads itself forever"


# --- process-wide state -------------------------------------------------------------------


def test_reading_two_csv_reports_at_once_leaves_the_process_csv_field_limit_as_it_was():
    """csv_report_rows sets the *process-wide* csv.field_size_limit while its generator
    lives and restores what it saw: two runs interleaved (two worker threads) leave it lowered for good."""
    from reconciliation.sources import csv_report_rows

    before = csv.field_size_limit()
    first = csv_report_rows(io.BytesIO(CSV_BODY))
    second = csv_report_rows(io.BytesIO(CSV_BODY))
    next(first)
    next(second)
    list(first)
    list(second)
    assert csv.field_size_limit() == before


@pytest.fixture
def gone():
    partner = gone_partner()
    yield partner
    from infra.databases import partner_database_unregister

    partner_database_unregister(partner.database_alias)


@pytest.fixture
def root_client_raw(users):
    client = Client(raise_request_exception=False)
    client.force_login(users["root"])
    return client
