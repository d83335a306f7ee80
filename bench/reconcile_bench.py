"""Reconcile a 100,000-row CSV report against 1,000,000 stored conversions on PostgreSQL.

    python bench/reconcile_bench.py                        # 1,000,000 stored, 100,000 reported, 3 rounds
    python bench/reconcile_bench.py --stored 200000 --rounds 2

Creates two throwaway PostgreSQL databases (configuration + one partner), fills the
partner's with generate_series (one INSERT ... SELECT), writes the network's CSV report
for a 10-day window with planted differences (1% missing here, 1% missing there, 1%
status, 1% amount), and times the project's own run (reconciliation_run, the same code
as the admin's upload) over several rounds; checks every round finds exactly what was
planted. Then measures peak Python memory (tracemalloc) for reports of 25%, 50% and
100% of the size, to show it does not grow with the report, and times recording the
missing ones and applying the report once. Drops both databases at the end.
"""

import argparse
import datetime
import os
import resource
import signal
import statistics
import sys
import tempfile
import time
import tracemalloc
import uuid
from decimal import Decimal
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parents[1]
SERVER = "postgres://root@127.0.0.1:5432"
BASE = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)
DAYS = 100  # the stored conversions are spread evenly over these days
WINDOW = (40, 49)  # the report's days (0-based, included)
HEADER = "conversion_id,datetime_conversion,offer_id,usd_sale_amount,usd_payout,conversion_currency,conversion_status\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stored", type=int, default=1_000_000, help="stored conversions (default 1,000,000)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--server", default=SERVER, help="PostgreSQL server URL without a database name")
    args = parser.parse_args()
    if args.stored % DAYS:
        parser.error(f"--stored must be a multiple of {DAYS}")

    token = uuid.uuid4().hex[:6]
    default_name = f"reconcile_bench_{token}_default"
    partner_name = f"reconcile_bench_{token}_partner"
    os.environ["DATABASE_URL"] = f"{args.server}/{default_name}"
    os.environ.setdefault("SECRET_KEY", "reconcile-bench-" + "x" * 40)
    os.environ["LOG_LEVEL"] = "WARNING"
    os.environ["DJANGO_SETTINGS_MODULE"] = "postback_site.settings"
    sys.path[:0] = [str(PROJECT_DIR)]
    import django

    django.setup()
    # Stopped with SIGTERM too, the databases are dropped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        run(args, partner_url=f"{args.server}/{partner_name}")
    finally:
        drop(args.server, [default_name, partner_name])


def run(args: argparse.Namespace, *, partner_url: str) -> None:
    from django.core.management import call_command
    from django.db import connections

    from bench.postback_bench import cpu_model
    from infra.databases import database_create_if_missing, partner_database_provision
    from partners.models import Partner
    from partners.services import SEED_PARTNERS
    from reconciliation.models import ReportSource

    print(f"CPU: {cpu_model()} ({os.cpu_count()} cores); load average at start: {os.getloadavg()}")
    database_create_if_missing("default")
    call_command("migrate", verbosity=0)
    involve = next(p for p in SEED_PARTNERS if p["partner_code"] == "involve_asia")
    partner = Partner.objects.create(**{**involve, "database_url": partner_url})
    partner_database_provision(partner=partner)
    source = ReportSource.objects.create(partner=partner, name="bench CSV", kind="csv")

    per_day = args.stored // DAYS
    started = time.perf_counter()
    stored_fill(connections[partner.database_alias], partner_id=partner.pk, rows=args.stored)
    print(f"stored {args.stored:,} conversions in {time.perf_counter() - started:.1f}s (generate_series)")

    with tempfile.TemporaryDirectory() as directory:
        full = Path(directory) / "report.csv"
        planted = report_write(full, per_day=per_day, fraction=1.0)
        print(f"report: {planted['rows']:,} rows, {full.stat().st_size / 1e6:.1f} MB; planted {planted['expected']}")

        seconds = []
        for round_number in range(1, args.rounds + 1):
            took, run_ = timed_run(source, full)
            check(run_, planted["expected"])
            seconds.append(took)
            print(
                f"round {round_number}: {took:.2f}s, {planted['rows'] / took:,.0f} report rows/s, counts {run_.counts}"
            )
        print(f"median of {len(seconds)} rounds: {statistics.median(seconds):.2f}s (target < 60 s)")

        print("peak Python memory (tracemalloc) by report size, the same stored table:")
        for fraction in (0.25, 0.5, 1.0):
            path = Path(directory) / f"report-{fraction}.csv"
            sized = report_write(path, per_day=per_day, fraction=fraction)
            tracemalloc.start()
            _took, run_ = timed_run(source, path)
            _current, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            check(run_, sized["expected"])
            print(f"  {sized['rows']:>7,} report rows: peak {peak / 1e6:.1f} MB")
        print(f"process max RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")

        recovery(partner, run_)
    print(f"load average at end: {os.getloadavg()}")


def timed_run(source, path: Path):
    from reconciliation.services import reconciliation_run

    first, last = (datetime.date(2025, 1, 1) + datetime.timedelta(days=day) for day in WINDOW)
    with path.open("rb") as upload:
        started = time.perf_counter()
        run_ = reconciliation_run(source=source, date_from=first, date_to=last, upload=upload)
        took = time.perf_counter() - started
    if run_.state != "done":
        raise SystemExit(f"run failed: {run_.error}")
    return took, run_


def check(run_, expected: dict[str, int]) -> None:
    found = {kind: n for kind, n in run_.counts.items() if n}
    if found != expected:
        raise SystemExit(f"the run found {found}, planted {expected}")


def recovery(partner, run_) -> None:
    from reconciliation.services import run_missing_record, run_report_apply

    started = time.perf_counter()
    recorded = run_missing_record(partner=partner, run=run_)
    middle = time.perf_counter()
    applied = run_report_apply(partner=partner, run=run_)
    ended = time.perf_counter()
    print(f"record the missing ones: {recorded} in {middle - started:.2f}s")
    print(f"apply the report: {applied} in {ended - middle:.2f}s")


def stored_fill(connection, *, partner_id: int, rows: int) -> None:
    """`rows` originals, IA-1..IA-rows, evenly over DAYS days from BASE; every third pending."""
    spacing = DAYS * 86400 / rows
    with connection.cursor() as cursor:
        cursor.execute("SET statement_timeout = 0")
        cursor.execute(
            """
            INSERT INTO partner_conversions (
                partner_id, conversion_id, offer_id, conversion_datetime, usd_sale_amount, usd_earning,
                status, currency, is_processed, is_duplicate, raw_data, request_headers, request_digests,
                received_at, created_at, updated_at)
            SELECT %s, 'IA-' || g, (g %% 50)::text, %s + (g - 1) * make_interval(secs => %s),
                   ((g %% 500) + 10)::numeric(15, 2), (((g %% 500) + 10) * 0.05)::numeric(15, 2),
                   CASE WHEN g %% 3 = 0 THEN 'pending' ELSE 'approved' END, 'USD', true, false,
                   '{}'::jsonb, '{}'::jsonb, '[]'::jsonb, now(), now(), now()
            FROM generate_series(1, %s) AS g
            """,
            [partner_id, BASE, spacing, rows],
        )
        cursor.execute("VACUUM ANALYZE partner_conversions")
        cursor.execute("RESET statement_timeout")
    connection.close()


def report_write(path: Path, *, per_day: int, fraction: float) -> dict:
    """The report of the WINDOW's days (the first `fraction` of each day's conversions):
    per 100 of ours, 1 left out (missing there), 1 with another status, 1 with another
    payout, and 1 conversion of its own we never received (missing here)."""
    expected = {"missing_here": 0, "missing_there": 0, "status_differs": 0, "amount_differs": 0, "matched": 0}
    rows = 0
    first, last = WINDOW
    spacing = 86400 / per_day
    with path.open("w", encoding="utf-8", newline="") as out:
        out.write(HEADER)
        for g in range(first * per_day + 1, (last + 1) * per_day + 1):
            if (g - first * per_day - 1) % per_day >= per_day * fraction:
                # Ours, in range, left out of this smaller report: missing there.
                expected["missing_there"] += 1
                continue
            moment = (BASE + datetime.timedelta(seconds=(g - 1) * spacing)).strftime("%Y-%m-%d %H:%M:%S")
            sale = Decimal(g % 500 + 10)
            payout = (sale * Decimal("0.05")).quantize(Decimal("0.01"))
            status = "pending" if g % 3 == 0 else "approved"
            kind = g % 100
            if kind == 0:
                expected["missing_there"] += 1
                continue
            if kind == 1:
                status = "rejected"
                expected["status_differs"] += 1
            elif kind == 2:
                payout += Decimal("1.00")
                expected["amount_differs"] += 1
            else:
                expected["matched"] += 1
            out.write(f"IA-{g},{moment},{g % 50},{sale}.00,{payout},USD,{status}\n")
            rows += 1
            if kind == 3:
                out.write(f"IA-new-{g},{moment},{g % 50},{sale}.00,{payout},USD,pending\n")
                expected["missing_here"] += 1
                rows += 1
    return {"rows": rows, "expected": {kind: n for kind, n in expected.items() if n}}


def drop(server: str, names: list[str]) -> None:
    import psycopg
    from django.db import connections

    from infra.databases import connection_broker

    connections.close_all()
    connection_broker.close_idle()
    with psycopg.connect(f"{server.replace('postgres://', 'postgresql://', 1)}/postgres", autocommit=True) as conn:
        for name in names:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
