"""The daily run happens without anyone acting: two real background worker processes
(`manage.py deliver_postbacks`) against a local InvolveAsia API; one run, each missing
conversion recorded once (automatic recovery switched on)."""

import datetime
import time

import pytest
from django.db import connections

from conversions.models import PartnerConversion
from reconciliation.models import ReconciliationRun, ReportSource
from tests.e2e.server import service_env
from tests.publishers.test_workers_concurrent import start_worker
from tests.reconciliation.fake_involve_asia import FakeInvolveAsia

KEY, SECRET = "ia-key-e2e", "ia-secret-e2e"
RECORDS = 250


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
@pytest.mark.direct_postgres
def test_two_worker_processes_run_the_daily_reconciliation_once_and_record_each_missing_one_once(involve, tmp_path):
    involve.timezone = "Asia/Kuala_Lumpur"
    involve.save(update_fields=["timezone"])
    local_now = involve.local_now()
    yesterday = local_now.date() - datetime.timedelta(days=1)
    records = [
        {
            "conversion_id": 700000 + n,
            "offer_id": 51,
            "offer_name": "Lazada MY",
            "sale_amount": "120.50",
            "payout": "6.03",
            "base_payout": "5.03",
            "bonus_payout": "1.00",
            "currency": "MYR",
            "aff_sub1": f"RAMPUP-{n}",
            "datetime_conversion": f"{yesterday} 12:{n % 60:02d}:00",
            "conversion_status": "pending",
        }
        for n in range(RECORDS)
    ]
    fake = FakeInvolveAsia(records, key=KEY, secret=SECRET)
    try:
        source = ReportSource.objects.create(
            partner=involve,
            name="InvolveAsia API",
            kind="involve_asia",
            base_url=fake.base_url,
            api_key=KEY,
            api_secret=SECRET,
            schedule_daily=True,
            # Due a minute ago in the partner's time zone (GMT+8): nobody starts it.
            schedule_at=(local_now - datetime.timedelta(minutes=1)).time().replace(second=0, microsecond=0)
            if local_now.hour or local_now.minute
            else datetime.time(0, 0),
            schedule_days=2,
            auto_record_missing=True,
        )
        default = connections["default"].settings_dict
        env = service_env(
            DATABASE_URL=f"postgres://root@127.0.0.1:5432/{default['NAME']}",
            RECONCILE_POLL_SECONDS="0.2",
            DELIVERY_POLL_SECONDS="0.2",
        )
        workers = [start_worker(env, tmp_path / f"worker-{n}.log") for n in (1, 2)]
        try:
            alias = involve.database_alias
            deadline = time.monotonic() + 90
            while True:
                run = ReconciliationRun.objects.using(alias).order_by("pk").first()
                if run is not None and run.state not in ("queued", "running") and run.recorded == RECORDS:
                    break
                assert time.monotonic() < deadline, (
                    f"no finished daily run: {run and (run.state, run.error, run.recorded)}\n"
                    + "\n".join((tmp_path / f"worker-{n}.log").read_text()[-2000:] for n in (1, 2))
                )
                time.sleep(0.3)
                connections[alias].close()
            time.sleep(1.0)  # both workers keep polling: nothing more may happen
        finally:
            for worker in workers:
                worker.terminate()
            for worker in workers:
                worker.wait(timeout=30)
        runs = list(ReconciliationRun.objects.using(alias).all())
        assert len(runs) == 1, [(r.pk, r.trigger, r.state) for r in runs]
        (run,) = runs
        assert (run.state, run.trigger, run.report_rows) == ("done", "schedule", RECORDS), run.error
        originals = PartnerConversion.objects.using(alias).filter(is_duplicate=False)
        assert originals.count() == RECORDS
        assert PartnerConversion.objects.using(alias).count() == RECORDS  # no duplicate row either
        source.refresh_from_db()
        assert source.scheduled_through == local_now.date() and source.queued_at is None
        for n in (1, 2):
            log = (tmp_path / f"worker-{n}.log").read_text()
            assert "Traceback" not in log, log[-3000:]
    finally:
        fake.stop()
