"""Retention purge on a seeded PostgreSQL partner database while postbacks keep arriving.

    python bench/purge_while_ingesting.py --rows 200000 --batch-sizes 1000,200000

Seeds `--rows` conversions over 60 days (bench/seed_conversions.py), so a 30-day
retention expires about half. For each batch size: re-seed, then run
conversions_purge while another connection INSERTs a conversion in a loop; print the
purge's speed and the insert latency seen meanwhile (what a partner would feel).
"""

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_DIR))
sys.path.insert(0, str(PROJECT_DIR / "bench"))


def insert_loop(url: str, stop: threading.Event, latencies: list[float]) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        index = 0
        while not stop.is_set():
            index += 1
            started = time.perf_counter()
            conn.execute(
                "INSERT INTO partner_conversions (partner_id, conversion_id, is_processed, is_duplicate, raw_data,"
                " request_headers, received_at, created_at, updated_at)"
                " VALUES (1, %s, true, false, '{}', '{}', now(), now(), now())",
                [f"live-{time.monotonic_ns()}-{index}"],
            )
            latencies.append((time.perf_counter() - started) * 1000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default="postgres://root@127.0.0.1:5432/postback_bench_purge_db")
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--batch-sizes", default="1000,200000")
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "postback_site.settings")
    os.environ.setdefault("LOG_LEVEL", "WARNING")

    import django
    from seed_conversions import seed

    django.setup()
    from conversions.retention import conversions_purge
    from partners.models import Partner

    url = args.database_url.replace("postgres://", "postgresql://", 1)
    partner = Partner(pk=1, partner_code="bench", database_name="bench_db", database_url=args.database_url)
    partner.data_retention_days = 30
    print(f"{args.rows:,} seeded rows over 60 days, retention 30 days")
    for batch_size in [int(size) for size in args.batch_sizes.split(",")]:
        seed(database_url=args.database_url, rows=args.rows)
        baseline: list[float] = []
        stop = threading.Event()
        thread = threading.Thread(target=insert_loop, args=(url, stop, baseline))
        thread.start()
        time.sleep(2)
        stop.set()
        thread.join()
        during: list[float] = []
        stop = threading.Event()
        thread = threading.Thread(target=insert_loop, args=(url, stop, during))
        thread.start()
        started = time.perf_counter()
        result = conversions_purge(partner=partner, batch_size=batch_size)
        seconds = time.perf_counter() - started
        stop.set()
        thread.join()
        during.sort()
        print(
            f"  batch {batch_size:>7,}: deleted {result.conversions:,} in {result.batches} batch(es), {seconds:.1f}s "
            f"({result.conversions / seconds:,.0f} rows/s); concurrent INSERT ms: "
            f"median {statistics.median(during):.2f} (idle {statistics.median(baseline):.2f}), "
            f"p99 {during[int(len(during) * 0.99)]:.2f}, max {during[-1]:.1f}, {len(during):,} inserts"
        )


if __name__ == "__main__":
    main()
