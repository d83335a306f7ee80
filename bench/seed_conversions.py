"""Fill a partner's PostgreSQL database with realistic conversions, fast (COPY).

    python bench/seed_conversions.py --database-url postgres://root@127.0.0.1:5432/bench_db --rows 1000000

Creates the database and its schema when missing (through the project's own
provisioning), then streams rows with COPY: ~94% originals, ~4% duplicates pointing
at an original, ~2% rejected, spread over the last 60 days across 50 offers.
Importable: `seed(database_url=..., rows=...)` for other benchmark scripts.
"""

import argparse
import json
import os
import random
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parents[1]
COLUMNS = (
    "partner_id, conversion_id, offer_id, offer_name, conversion_datetime, usd_sale_amount, usd_earning, "
    "media_id, sub_id, click_id, status, currency, is_processed, is_duplicate, duplicate_of_id, "
    "processing_error, raw_data, request_headers, request_ip, received_at, created_at, updated_at, request_digests"
)
STATUSES = ("pending", "approved", "approved", "approved", "rejected")


def provision(database_url: str, alias: str = "bench_db") -> None:
    """Create the database and migrate the conversions schema, as init_partners would."""
    sys.path.insert(0, str(PROJECT_DIR))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "postback_site.settings")
    import django

    django.setup()
    from infra.databases import partner_database_provision
    from partners.models import Partner

    print(partner_database_provision(partner=Partner(database_name=alias, database_url=database_url)).describe())


def rows_for(count: int, *, partner_id: int, days: int, seed: int):
    rng = random.Random(seed)
    now = datetime.now(UTC)
    span = days * 86400
    originals = 0
    original_ids: list[int] = []  # ids follow COPY order after RESTART IDENTITY
    for index in range(count):
        received = now - timedelta(seconds=span * (count - index) / count)
        converted = received - timedelta(seconds=rng.randint(0, 3600))
        offer = rng.randint(1, 50)
        sale = rng.randint(100, 50000) / 100
        kind = rng.random()
        duplicate_of = None
        error = None
        if kind < 0.04 and originals:
            target = rng.randint(1, originals)
            conversion_id = f"conv-{target:09d}"
            duplicate_of = original_ids[target - 1]
            is_duplicate = True
        elif kind < 0.06:
            conversion_id = f"bad-{index:09d}"
            is_duplicate = False
            error = "usd_sale_amount: usd_sale_amount: 'abc' is not a number"
        else:
            originals += 1
            original_ids.append(index + 1)
            conversion_id = f"conv-{originals:09d}"
            is_duplicate = False
        params = {"conversion_id": conversion_id, "offer_id": str(offer), "aff_sub": f"sub-{rng.randint(1, 5000)}"}
        yield (
            partner_id,
            conversion_id,
            str(offer),
            f"Offer {offer}",
            converted,
            None if error else sale,
            None if error else round(sale * 0.08, 2),
            f"media-{rng.randint(1, 200)}",
            params["aff_sub"],
            f"click-{index:010d}",
            rng.choice(STATUSES),
            "USD",
            not is_duplicate and error is None,
            is_duplicate,
            duplicate_of,
            error,
            json.dumps(params),
            json.dumps({"User-Agent": "bench"}),
            "203.0.113.7",
            received,
            received,
            received,
            "[]",
        )


def seed(*, database_url: str, rows: int, partner_id: int = 1, days: int = 60, seed: int = 7) -> float:
    """Empty the partner database's conversions and COPY `rows` new ones; return seconds taken."""
    import psycopg

    provision(database_url)
    started = time.perf_counter()
    with psycopg.connect(database_url.replace("postgres://", "postgresql://", 1)) as conn:
        conn.execute("TRUNCATE partner_conversions RESTART IDENTITY")
        with conn.cursor() as cursor, cursor.copy(f"COPY partner_conversions ({COLUMNS}) FROM STDIN") as copy:  # noqa: S608
            for row in rows_for(rows, partner_id=partner_id, days=days, seed=seed):
                copy.write_row(row)
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE partner_conversions")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default="postgres://root@127.0.0.1:5432/postback_bench_db")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--partner-id", type=int, default=1)
    args = parser.parse_args()
    seconds = seed(database_url=args.database_url, rows=args.rows, partner_id=args.partner_id)
    print(f"seeded {args.rows:,} conversions in {seconds:.1f}s ({args.rows / seconds:,.0f} rows/s)")


if __name__ == "__main__":
    main()
