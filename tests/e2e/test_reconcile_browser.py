"""A 100,000-row CSV report (about 7 MB) uploaded in a real browser on the admin's
*Reconcile…* page, through a real gunicorn, performed by a real background worker
(`manage.py deliver_postbacks`) while the run's page shows its progress; the worker's peak
memory is printed (and bounded, generously: the report is read as a stream)."""

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.e2e.server import PROJECT_DIR, manage, running_server
from tests.e2e.test_admin_browser import CREATE_USERS, WIDTH, log_in

pytestmark = pytest.mark.e2e

ROWS = 100_000
CREATE_SOURCE = """
from partners.models import Partner
from reconciliation.models import ReportSource
partner = Partner.objects.get(partner_code="involve_asia")
source = ReportSource.objects.create(partner=partner, name="Monthly CSV", kind="csv")
print(source.pk)
"""


def report_file(path: Path) -> Path:
    header = "conversion_id,datetime_conversion,conversion_status,offer_id,aff_sub,usd_sale_amount,usd_payout\n"
    with path.open("w") as out:
        out.write(header)
        for n in range(ROWS):
            out.write(f"IA-{n:07d},2025-03-01 {n % 24:02d}:{n % 60:02d}:00,pending,1021,RAMPUP-{n},20.00,1.00\n")
    return path


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_a_100k_row_report_uploads_queues_and_runs_with_progress_in_flat_worker_memory(tmp_path, postgres_env, browser):
    env = {key: value for key, value in postgres_env.items() if key != "_PREFIX"}
    env["RECONCILE_POLL_SECONDS"] = "0.3"
    for command in (["collectstatic", "--noinput"], ["shell", "-c", CREATE_USERS]):
        done = manage(env, *command)
        assert done.returncode == 0, done.stderr
    made = manage(env, "shell", "-c", CREATE_SOURCE)
    assert made.returncode == 0, made.stderr
    source_id = int(made.stdout.strip().splitlines()[-1])
    report = report_file(tmp_path / "involve-march.csv")
    size = report.stat().st_size
    assert size > 6_000_000

    with running_server(env, tmp_path / "server.log") as base, open(tmp_path / "worker.log", "w") as log:
        worker = subprocess.Popen(
            [sys.executable, "manage.py", "deliver_postbacks"],
            cwd=PROJECT_DIR,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 60
            while "background jobs started" not in (tmp_path / "worker.log").read_text():
                assert worker.poll() is None and time.monotonic() < deadline, (tmp_path / "worker.log").read_text()
                time.sleep(0.2)
            idle_rss = rss_kib(worker.pid)

            page = browser.new_page(viewport={"width": WIDTH, "height": 900})
            log_in(page, base, "manager")
            page.goto(f"{base}/admin/reconciliation/reportsource/{source_id}/change/")
            page.click("text=Reconcile…")
            page.fill("#id_date_from", "2025-03-01")
            page.fill("#id_date_to", "2025-03-01")
            page.set_input_files("#id_report", str(report))
            page.click("input[type=submit]")
            expect(page.locator(".messagelist")).to_contain_text("is queued")
            expect(page.locator("#run-progress")).to_contain_text("involve-march.csv")
            run_url = page.url

            progress_seen = []
            deadline = time.monotonic() + 300
            while True:
                page.goto(run_url)
                state = page.locator("#run-state").inner_text()
                progress = page.locator("#run-progress").inner_text()
                if "running" in state:
                    progress_seen.append(int(re.search(r"(\d+) report row", progress).group(1)))
                if "done" in state or "failed" in state:
                    break
                assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
                assert time.monotonic() < deadline, f"the run did not end: {state} {progress}"
                time.sleep(0.5)
            peak = peak_rss_kib(worker.pid)
        finally:
            worker.terminate()
            worker.wait(timeout=30)
    assert "done" in state, (tmp_path / "worker.log").read_text()[-3000:]
    counts = page.locator("#run-counts").inner_text()
    assert re.search(r"missing here \(never received\)\s+100000", counts), counts
    assert any(0 < seen < ROWS for seen in progress_seen), progress_seen
    print(
        f"\nupload {size / 1e6:.1f} MB, {ROWS} rows: the worker's RSS idle {idle_rss / 1024:.0f} MiB, "
        f"peak {peak / 1024:.0f} MiB; progress seen (rows compared): {progress_seen[:8]}"
    )
    # The file is read as a stream and compared a batch at a time: the peak stays far below
    # what holding the file and its 100,000 rows would take.
    assert peak - idle_rss < 100 * 1024, (idle_rss, peak)
