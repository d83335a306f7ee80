"""Time the read API on a partner database of 1,000,000 conversions (PostgreSQL).

    .venv/bin/python bench/api_bench.py            # 1,000,000 rows, 7 runs per case
    .venv/bin/python bench/api_bench.py --rows 200000 --runs 5

Seeds a fresh PostgreSQL partner database with bench/seed_conversions.py (COPY), then
calls the endpoints through the whole Django stack (URL routing, token authentication,
permission, serializers, the partner's database) with Django's test client, and prints
the median of several runs for: the first page, a filtered page, a deep page reached
by a `next` cursor, a CSV export of 100,000 rows (rows/s, and in a separate traced run
the peak Python heap growth, compared with a 10,000-row export to show it stays flat)
and 30 days of stats.
The configuration database is a throw-away SQLite file; the partner database is
dropped at the end.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parents[1]
SERVER = "postgres://root@127.0.0.1:5432"
DATABASE = "postback_api_bench"
PAGE_TARGET_MS = 100
STATS_TARGET_MS = 300
CSV_TARGET_ROWS_PER_S = 50_000


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def setup_django(config_dir: str) -> None:
    os.environ.update(
        DATABASE_URL=f"sqlite:///{config_dir}/default.sqlite3",
        PARTNER_DATABASE_URL=f"sqlite:///{config_dir}/{{name}}.sqlite3",
        ALLOWED_HOSTS="testserver",
        DEBUG="false",
        LOG_LEVEL="WARNING",
        SECRET_KEY="bench-" + "k" * 50,
        DJANGO_SETTINGS_MODULE="postback_site.settings",
    )
    sys.path.insert(0, str(PROJECT_DIR))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def drop_database() -> None:
    import psycopg
    from django.db import connections
    from psycopg import sql

    connections.close_all()
    with psycopg.connect("postgresql://root@127.0.0.1:5432/postgres", autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DATABASE)))


def timed(call, runs: int) -> tuple[float, object]:
    """Median milliseconds over `runs` calls (after one warm-up), and the last result."""
    result = call()
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        result = call()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--csv-rows", type=int, default=100_000)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="api_bench_") as config_dir:
        setup_django(config_dir)
        try:
            run(args)
        finally:
            drop_database()
            print(f"dropped database {DATABASE}")


def run(args: argparse.Namespace) -> None:
    from django.contrib.auth.models import User
    from django.test import Client
    from rest_framework.authtoken.models import Token

    from bench.seed_conversions import seed
    from conversions.models import PartnerConversion
    from conversions.selectors import Cursor
    from partners.services import partner_create

    drop_database()
    database_url = f"{SERVER}/{DATABASE}"
    partner = partner_create(
        partner_code="bench",
        partner_name="Bench",
        endpoint_path="/bench/event",
        database_name="bench_db",
        database_url=database_url,
    )
    seconds = seed(database_url=database_url, rows=args.rows, partner_id=partner.pk)
    print(f"seeded {args.rows:,} conversions in {seconds:.1f}s")

    user = User.objects.create_superuser("bench", password=None)
    client = Client(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    base = "/partner/bench/event"

    def get_json(url: str) -> dict:
        response = client.get(url)
        assert response.status_code == 200, response.content[:500]
        return response.json()

    results: list[tuple[str, str, str, bool | None]] = []

    def page(name: str, url: str) -> dict:
        ms, body = timed(lambda: get_json(url), args.runs)
        rows = len(body.get("results", []))
        results.append((name, f"{ms:.1f} ms", f"{rows} rows", ms < PAGE_TARGET_MS))
        return body

    first = page("first page (limit 50)", f"{base}/conversions")
    page("next page of the first", first["next"])
    page("filtered: offer_id=7&is_duplicate=false", f"{base}/conversions?offer_id=7&is_duplicate=false")
    page("filtered: sub_id=sub-1234", f"{base}/conversions?sub_id=sub-1234")
    page("filtered: has_error=true (2% of rows)", f"{base}/conversions?has_error=true")
    page("filtered: status=pending&from=<45 days ago>", f"{base}/conversions?status=pending&from={days_ago(45)}")

    # A deep page: the cursor of the row 900,000 places down, as a `next` link carries it.
    deep_row = (
        PartnerConversion.objects.using(partner.database_alias)
        .order_by("-received_at", "-id")
        .values("received_at", "id")[int(args.rows * 0.9)]
    )
    deep_cursor = Cursor(received_at=deep_row["received_at"], id=deep_row["id"]).encode()
    deep = page(
        f"deep page (after row {int(args.rows * 0.9):,}, via cursor)", f"{base}/conversions?cursor={deep_cursor}"
    )
    page("the deep page's next", deep["next"])
    page("limit=1000 page", f"{base}/conversions?limit=1000")

    ms, stats = timed(lambda: get_json(f"{base}/stats"), args.runs)
    totals = stats["totals"]
    results.append(
        (
            "stats, last 30 days",
            f"{ms:.1f} ms",
            f"{totals['originals'] + totals['duplicates'] + totals['rejected']:,} rows",
            ms < STATS_TARGET_MS,
        )
    )

    ms, stats = timed(lambda: get_json(f"{base}/stats?time_field=conversion_datetime"), args.runs)
    totals = stats["totals"]
    results.append(
        (
            "stats, 30 days on conversion_datetime",
            f"{ms:.1f} ms",
            f"{totals['originals'] + totals['duplicates'] + totals['rejected']:,} rows",
            None,  # no covering index for this one: shown for comparison, no target
        )
    )

    def export(limit: int) -> tuple[int, float]:
        started = time.perf_counter()
        response = client.get(f"{base}/conversions?format=csv&limit={limit}")
        lines = sum(chunk.count(b"\n") for chunk in response.streaming_content)
        return lines - 1, time.perf_counter() - started

    def export_memory(limit: int) -> tuple[int, int]:
        """Peak Python heap growth while exporting, and resident-set growth (separate, traced run)."""
        rss_before = rss_bytes()
        tracemalloc.start()
        try:
            baseline = tracemalloc.get_traced_memory()[0]
            export(limit)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        return peak - baseline, rss_bytes() - rss_before

    for limit in (10_000, args.csv_rows):
        export(limit)  # warm-up
        runs = [export(limit) for _ in range(max(3, args.runs // 2))]
        rows = runs[0][0]
        rate = statistics.median(rows / elapsed for _, elapsed in runs)
        heap, rss = export_memory(limit)
        results.append(
            (
                f"CSV export, {rows:,} rows",
                f"{rate:,.0f} rows/s",
                f"heap peak +{heap / 2**20:.1f} MiB, RSS {rss / 2**20:+.1f} MiB",
                rate > CSV_TARGET_ROWS_PER_S,
            )
        )

    print(f"\nread API on {args.rows:,} conversions (PostgreSQL), median of {args.runs} runs:")
    width = max(len(name) for name, *_ in results)
    for name, figure, detail, ok in results:
        print(
            f"  {name:<{width}}  {figure:>16}  {detail:>34}  {'-' if ok is None else 'ok' if ok else 'MISSED TARGET'}"
        )
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"load average (1, 5, 15 min) at the end: {load} on {os.cpu_count()} CPUs")
    print(f"targets: pages < {PAGE_TARGET_MS} ms, stats < {STATS_TARGET_MS} ms, CSV > {CSV_TARGET_ROWS_PER_S:,} rows/s")


def days_ago(days: int) -> str:
    from datetime import UTC, datetime, timedelta

    return (datetime.now(UTC) - timedelta(days=days)).date().isoformat()


if __name__ == "__main__":
    main()
