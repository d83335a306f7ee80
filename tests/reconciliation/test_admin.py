"""The reconciliation admin: a source with write-only credentials, a run from a CSV upload,
rows discrepancies first, recovery actions and the CSV download."""

import csv
import datetime
import io
import re
import threading
from urllib.parse import parse_qsl, urlencode

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from reconciliation.models import ReconciliationRow, ReconciliationRun, ReportSource
from reconciliation.runs import runs_tick
from tests.conftest import fixture_queries, partner_rows

BASE = dict(parse_qsl(fixture_queries("involve_asia", "lifecycle_approve")[0]))
SECRET = "admin-secret-4e2b9f"
pytestmark = pytest.mark.parametrize("backend", ["sqlite"])


def worker_runs() -> int:
    """What the background worker does with the queued runs: how many it performed."""
    performed = 0
    while runs_tick(threading.Event()):
        performed += 1
    return performed


@pytest.fixture
def root_client(client, users):
    client.force_login(users["root"])
    return client


def report(records):
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(records[0]))
    writer.writeheader()
    writer.writerows(records)
    return SimpleUploadedFile("report.csv", text.getvalue().encode(), content_type="text/csv")


def test_api_credentials_are_write_only(root_client, involve):
    add = root_client.post(
        "/admin/reconciliation/reportsource/add/",
        {
            "partner": involve.pk,
            "name": "IA API",
            "kind": "involve_asia",
            "is_active": "on",
            "column_mapping-TOTAL": "0",
            "base_url": "https://api.involve.asia/api",
            "api_key": "key-1",
            "api_secret": SECRET,
            "page_size": "100",
            "requests_per_minute": "60",
            "schedule_at": "06:00",
            "schedule_days": "7",
            "timeout_seconds": "30",
        },
    )
    assert add.status_code == 302, add.content.decode()[:2000]
    source = ReportSource.objects.get()
    assert (source.api_key, source.api_secret) == ("key-1", SECRET)
    page = root_client.get(f"/admin/reconciliation/reportsource/{source.pk}/change/").content.decode()
    assert SECRET not in page and "key-1" not in page
    assert "Set (never shown again)" in page

    # Saved again with the credential fields empty: the stored ones are kept.
    edit = root_client.post(
        f"/admin/reconciliation/reportsource/{source.pk}/change/",
        {
            "partner": involve.pk,
            "name": "IA API (renamed)",
            "kind": "involve_asia",
            "column_mapping-TOTAL": "0",
            "base_url": "https://api.involve.asia/api",
            "api_key": "",
            "api_secret": "",
            "page_size": "100",
            "requests_per_minute": "60",
            "schedule_at": "06:00",
            "schedule_days": "7",
            "timeout_seconds": "30",
        },
    )
    assert edit.status_code == 302
    source.refresh_from_db()
    assert (source.name, source.api_key, source.api_secret) == ("IA API (renamed)", "key-1", SECRET)


def test_an_api_source_without_credentials_is_a_form_error(root_client, involve):
    page = root_client.post(
        "/admin/reconciliation/reportsource/add/",
        {
            "partner": involve.pk,
            "name": "IA API",
            "kind": "involve_asia",
            "column_mapping-TOTAL": "0",
            "base_url": "",
            "page_size": "100",
            "requests_per_minute": "60",
            "schedule_at": "06:00",
            "schedule_days": "7",
            "timeout_seconds": "30",
        },
    )
    assert page.status_code == 200
    text = page.content.decode()
    assert "An API source needs its key and secret." in text
    assert "An API source needs its base URL" in text


def test_a_run_from_an_upload_rows_discrepancies_first_recovery_and_csv(root_client, client, involve):
    for conversion_id in ("IA-1", "IA-2"):
        client.get("/partner/involve/event?" + urlencode({**BASE, "conversion_id": conversion_id}))
    source = ReportSource.objects.create(partner=involve, name="CSV", kind="csv")
    records = [
        {**BASE, "conversion_id": "IA-1"},
        {**BASE, "conversion_id": "IA-3", "offer_name": "=HYPERLINK(1)"},
        {**BASE, "conversion_id": "IA-2", "conversion_status": "approved"},
    ]
    url = f"/admin/reconciliation/reportsource/{source.pk}/reconcile/"
    assert root_client.get(url).status_code == 200

    response = root_client.post(url, {"date_from": "2025-03-01", "date_to": "2025-03-01", "report": report(records)})

    run = ReconciliationRun.objects.using(involve.database_alias).get()
    assert response.status_code == 302 and response["Location"].endswith(f"/{run.pk}/change/?partner=involve_asia")
    queued = root_client.get(response["Location"]).content.decode()
    assert run.state == "queued" and "waiting for the background worker" in queued
    assert '<meta http-equiv="refresh"' in queued
    assert worker_runs() == 1
    detail = root_client.get(response["Location"]).content.decode()
    assert 'id="run-counts"' in detail and "missing here (never received)" in detail
    assert '<meta http-equiv="refresh"' not in detail and 'name="_save"' not in detail

    rows_page = root_client.get(f"/admin/reconciliation/reconciliationrow/?partner=involve_asia&run={run.pk}")
    listed = re.findall(r"IA-\d", rows_page.content.decode())
    assert listed[:3] == ["IA-3", "IA-2", "IA-1"]  # missing here, status differs, then matched
    only_missing = root_client.get(
        f"/admin/reconciliation/reconciliationrow/?partner=involve_asia&run={run.pk}&kind=missing_here"
    )
    assert set(re.findall(r"IA-\d", only_missing.content.decode())) == {"IA-3"}
    bad = root_client.get("/admin/reconciliation/reconciliationrow/?partner=involve_asia&run=abc")
    assert bad.status_code in (200, 302)

    download = root_client.get(f"/admin/reconciliation/reconciliationrun/{run.pk}/csv/?partner=involve_asia")
    lines = list(csv.reader(io.StringIO(b"".join(download.streaming_content).decode())))
    assert lines[0][:3] == ["conversion_id", "kind", "differences"]
    assert [line[:3] for line in lines[1:]] == [
        ["IA-3", "missing_here", ""],
        ["IA-2", "status_differs", "status: pending -> approved"],
        ["IA-1", "matched", ""],
    ]

    recover = f"/admin/reconciliation/reconciliationrun/{run.pk}/recover/?partner=involve_asia"
    done = root_client.post(recover, {"recover": "missing"}, follow=True)
    assert done.status_code == 200 and "missing ones recorded: recorded: 1" in done.content.decode()
    changelist = "/admin/reconciliation/reconciliationrun/?partner=involve_asia"
    for action in ("record_missing", "apply_report"):
        done = root_client.post(changelist, {"action": action, "_selected_action": [run.pk]}, follow=True)
        assert done.status_code == 200
    assert partner_rows(involve).filter(conversion_id="IA-3", is_duplicate=False).count() == 1
    assert partner_rows(involve).get(conversion_id="IA-2").status == "approved"
    actions = dict(ReconciliationRow.objects.using(involve.database_alias).values_list("conversion_id", "action"))
    assert actions == {"IA-1": "", "IA-2": "updated", "IA-3": "recorded"}


def test_bad_input_on_the_run_form_is_a_form_error_or_a_failed_run(root_client, involve):
    source = ReportSource.objects.create(partner=involve, name="CSV", kind="csv")
    url = f"/admin/reconciliation/reportsource/{source.pk}/reconcile/"

    backwards = root_client.post(url, {"date_from": "2025-03-02", "date_to": "2025-03-01", "report": report([BASE])})
    assert backwards.status_code == 200 and "The last day comes before the first." in backwards.content.decode()
    no_file = root_client.post(url, {"date_from": "2025-03-01", "date_to": "2025-03-01"})
    assert no_file.status_code == 200 and "This field is required." in no_file.content.decode()

    malformed = SimpleUploadedFile("r.csv", b"conversion_id,usd_payout\nIA-1,1\nIA-2,x\n")
    queued = root_client.post(url, {"date_from": "2025-03-01", "date_to": "2025-03-01", "report": malformed})
    assert queued.status_code == 302 and worker_runs() == 1
    failed = root_client.get(queued["Location"])
    assert failed.status_code == 200
    assert "line 3: usd_earning: usd_payout: &#x27;x&#x27; is not a number" in failed.content.decode()
    assert not ReconciliationRow.objects.using(involve.database_alias).exists()


def test_account_managers_reconcile_and_recover_analysts_only_look(users, involve):
    manager_client, analyst_client = Client(), Client()
    manager_client.force_login(users["manager"])
    analyst_client.force_login(users["analyst"])
    source = ReportSource.objects.create(partner=involve, name="CSV", kind="csv")
    url = f"/admin/reconciliation/reportsource/{source.pk}/reconcile/"
    started = manager_client.post(
        url, {"date_from": "2025-03-01", "date_to": "2025-03-01", "report": report([{**BASE, "conversion_id": "IA-5"}])}
    )
    assert started.status_code == 302 and worker_runs() == 1
    run = ReconciliationRun.objects.using(involve.database_alias).get()
    rows = f"/admin/reconciliation/reconciliationrow/?partner=involve_asia&run={run.pk}"

    assert analyst_client.get(rows).status_code == 200
    assert analyst_client.get(url).status_code == 403
    changelist = "/admin/reconciliation/reconciliationrun/?partner=involve_asia"
    analyst_client.post(changelist, {"action": "record_missing", "_selected_action": [run.pk]})
    assert not partner_rows(involve).exists()

    manager_client.post(changelist, {"action": "record_missing", "_selected_action": [run.pk]})
    assert partner_rows(involve).filter(conversion_id="IA-5").count() == 1


def test_the_source_page_offers_to_run_to_schedule_and_to_take_the_networks_time_zone(root_client, involve):
    source = ReportSource.objects.create(
        partner=involve,
        name="IA API",
        kind="involve_asia",
        base_url="https://api.involve.asia/api",
        api_key="k",
        api_secret="s",
    )
    url = f"/admin/reconciliation/reportsource/{source.pk}/change/"
    page = root_client.get(url).content.decode()
    assert f"/admin/reconciliation/reportsource/{source.pk}/reconcile/" in page and "Reconcile…" in page
    assert "Set the partner&#x27;s time zone to the report&#x27;s (Asia/Kuala_Lumpur)" in page
    assert "InvolveAsia API: GMT+8" in page
    form = {
        "partner": involve.pk,
        "name": "IA API",
        "kind": "involve_asia",
        "is_active": "on",
        "column_mapping-TOTAL": "0",
        "base_url": "https://api.involve.asia/api",
        "page_size": "100",
        "requests_per_minute": "60",
        "timeout_seconds": "30",
        "schedule_at": "07:30",
        "schedule_days": "3",
        "schedule_daily": "on",
        "auto_record_missing": "on",
        "partner_timezone_from_report": "on",
    }
    saved = root_client.post(url, form)
    assert saved.status_code == 302, saved.content.decode()[:3000]
    source.refresh_from_db()
    involve.refresh_from_db()
    assert (source.schedule_daily, str(source.schedule_at), source.schedule_days, source.auto_record_missing) == (
        True,
        "07:30:00",
        3,
        True,
    )
    assert involve.timezone == "Asia/Kuala_Lumpur"

    too_much = root_client.post(url, {**form, "page_size": "500", "requests_per_minute": "120"})
    text = too_much.content.decode()
    assert "answers at most 100 records per page" in text and "allows at most 60 requests per minute" in text
    csv_daily = ReportSource.objects.create(partner=involve, name="CSV", kind="csv")
    refused = root_client.post(
        f"/admin/reconciliation/reportsource/{csv_daily.pk}/change/",
        {**form, "name": "CSV", "kind": "csv", "base_url": ""},
    )
    assert "Only an API source can run by itself" in refused.content.decode()


def test_the_preview_page_shows_the_first_records_on_our_fields_before_any_run(root_client, involve, monkeypatch):
    from django.utils import timezone

    from reconciliation import sources
    from tests.reconciliation.fake_involve_asia import FakeInvolveAsia, VirtualClock, record

    monkeypatch.setattr(sources, "API_CLOCK", VirtualClock())
    today = timezone.now().astimezone(datetime.timezone(datetime.timedelta(hours=8))).date()
    fake = FakeInvolveAsia(
        [record(n, datetime_conversion=f"{today} 0{n}:00:00") for n in range(1, 4)],
        key="k-1",
        secret="s-1",
        clock=sources.API_CLOCK,
    )
    try:
        source = ReportSource.objects.create(
            partner=involve, name="IA API", kind="involve_asia", base_url=fake.base_url, api_key="k-1", api_secret="s-1"
        )
        change = root_client.get(f"/admin/reconciliation/reportsource/{source.pk}/change/").content.decode()
        assert f"/admin/reconciliation/reportsource/{source.pk}/preview/" in change
        page = root_client.get(f"/admin/reconciliation/reportsource/{source.pk}/preview/").content.decode()
        wrong = ReportSource.objects.create(
            partner=involve, name="IA API 2", kind="involve_asia", base_url=fake.base_url, api_key="k-1", api_secret="x"
        )
        refused = root_client.get(f"/admin/reconciliation/reportsource/{wrong.pk}/preview/").content.decode()
    finally:
        fake.stop()
    assert 'id="preview"' in page and "The network has 3 record(s)" in page
    assert "778800001" in page and "20.79" in page
    assert 'id="preview-error"' in refused and "authentication failed" in refused
