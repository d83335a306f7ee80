"""Import 100,000 conversions of the previous service into the shared-schema layout.

    python bench/import_legacy_bench.py                    # 100,000 rows, 3 runs
    python bench/import_legacy_bench.py --rows 20000 --runs 1

Creates three throwaway PostgreSQL databases: the configuration (`default`), the shared
partner database (PARTNER_DATABASE_URL without `{name}`: a schema per partner) with three
partners, and the previous service's database laid out by tests/fixtures/legacy/
(partners.sql, partner_conversions.sql), filled with one INSERT ... SELECT over
generate_series. A publisher matches every row. Each run empties the partners' tables,
then times `import_legacy` twice: the first import and the second, which must add 0.
Then re-sends 100 of the imported conversion_ids through the postback endpoint (Django's
test client) and checks that every answer is `duplicate` and that no delivery was queued
for a publisher. Drops the databases and the partners' roles at the end.
"""

import argparse
import io
import os
import re
import signal
import statistics
import sys
import time
import uuid
from decimal import Decimal
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parents[1]
SERVER = "postgres://root@127.0.0.1:5432"
LAYOUTS = PROJECT_DIR / "tests" / "fixtures" / "legacy"
PARTNERS = (
    {"partner_code": "involve_asia", "endpoint_path": "/involve/event", "database_name": "involve_asia_db"},
    {"partner_code": "rector", "endpoint_path": "/rector/event", "database_name": "rector_db"},
    {"partner_code": "acesstrade", "endpoint_path": "/acesstrade/event", "database_name": "acesstrade_db"},
)
# The previous service's rows: three partners in turn, raw parameters as InvolveAsia sends them.
FILL = """
INSERT INTO partner_conversions (
    partner_id, conversion_id, offer_id, offer_name, conversion_datetime, usd_sale_amount, usd_earning,
    media_id, sub_id, click_id, is_processed, raw_data, request_headers, request_ip, received_at, created_at
)
SELECT p, 'LC-' || i, 'OF' || (i %% 50), 'Offer ' || (i %% 50), t - interval '5 minutes',
       (i %% 997) + 0.99, ((i %% 997) + 0.99) / 10, 'media-' || (i %% 30), 'RPID' || i, 'click-' || i, TRUE,
       json_build_object('conversion_id', 'LC-' || i, 'aff_sub', 'RPID' || i, 'aff_sub2', 'media-' || (i %% 30),
                         'aff_sub3', 'click-' || i, 'offer_id', 'OF' || (i %% 50), 'offer_name', 'Offer ' || (i %% 50),
                         'usd_sale_amount', ((i %% 997) + 0.99)::text,
                         'usd_payout', round(((i %% 997) + 0.99) / 10, 2)::text,
                         'datetime_conversion', to_char(t - interval '5 minutes', 'YYYY-MM-DD HH24:MI:SS'),
                         'conversion_status', 'pending'),
       json_build_object('User-Agent', 'network/1.0'), '203.0.113.' || (i %% 250), t, t
FROM generate_series(1, %(rows)s) AS i,
     LATERAL (SELECT (i %% 3) + 1 AS p, timestamptz '2025-06-01 00:00:00+00' + i * interval '30 seconds' AS t) AS x
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--server", default=SERVER, help="PostgreSQL server URL without a database name")
    args = parser.parse_args()

    token = uuid.uuid4().hex[:6]
    names = {kind: f"import_bench_{token}_{kind}" for kind in ("default", "partners", "legacy")}
    os.environ["DATABASE_URL"] = f"{args.server}/{names['default']}"
    os.environ["PARTNER_DATABASE_URL"] = f"{args.server}/{names['partners']}"
    os.environ.setdefault("SECRET_KEY", "import-bench-" + "x" * 40)
    os.environ["LOG_LEVEL"] = "WARNING"
    os.environ["DJANGO_SETTINGS_MODULE"] = "postback_site.settings"
    sys.path[:0] = [str(PROJECT_DIR)]
    import django

    django.setup()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        run(
            args,
            legacy_url=f"{args.server}/{names['legacy']}",
            legacy_name=names["legacy"],
            partners_url=f"{args.server}/{names['partners']}",
        )
    finally:
        drop(args.server, list(names.values()))


def run(args: argparse.Namespace, *, legacy_url: str, legacy_name: str, partners_url: str) -> None:
    import psycopg
    from django.core.management import call_command
    from django.test import Client
    from django.test.utils import setup_test_environment

    from bench.postback_bench import cpu_model
    from infra.databases import database_create_if_missing, partner_database_provision
    from partners.models import Partner
    from partners.services import SEED_PARTNERS
    from publishers.models import Delivery, Publisher
    from publishers.services import publisher_save

    print(f"CPU: {cpu_model()} ({os.cpu_count()} cores); load average at start: {os.getloadavg()}")
    database_create_if_missing("default")
    call_command("migrate", verbosity=0)
    seeds = {seed["partner_code"]: seed for seed in SEED_PARTNERS}
    partners = []
    for definition in PARTNERS:
        seed = seeds.get(definition["partner_code"], {"parameter_mapping": {}})
        values = {**seed, **definition, "partner_name": definition["partner_code"].title()}
        partner = Partner.objects.create(**values)
        partner_database_provision(partner=partner)
        partners.append(partner)
    publisher = Publisher(
        code="everyone",
        name="Everyone",
        match_regex="^RPID",
        url_template="https://publisher.example/pb?sub={sub_id}",
        events=["recorded", "approved", "rejected", "paid"],
        payout_kind="percent_sale",
        payout_value=Decimal("1"),
    )
    publisher.save()
    publisher.partners.set(partners)
    publisher_save(publisher=publisher)

    admin_url = args.server.replace("postgres://", "postgresql://", 1)
    with psycopg.connect(f"{admin_url}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{legacy_name}"')
    with psycopg.connect(legacy_url, autocommit=True) as conn:
        for layout in ("partners", "partner_conversions"):
            conn.execute((LAYOUTS / f"{layout}.sql").read_text())
        for definition in PARTNERS:
            conn.execute(
                "INSERT INTO partners (partner_code, partner_name, endpoint_path) VALUES (%s, %s, %s)",
                [definition["partner_code"], definition["partner_code"].title(), definition["endpoint_path"]],
            )
        started = time.perf_counter()
        conn.execute(FILL, {"rows": args.rows})
        conn.execute("ANALYZE partner_conversions")
    filled = time.perf_counter() - started
    print(f"previous service's database: {args.rows:,} conversions over 3 partners in {filled:.1f}s")

    firsts, seconds = [], []
    for number in range(1, args.runs + 1):
        with psycopg.connect(partners_url, autocommit=True) as conn:
            for partner in partners:
                conn.execute(f'TRUNCATE "{partner.database_name}".partner_conversions')
        first, out = timed_import(legacy_url)
        imported = sum(int(n) for n in re.findall(r"imported (\d+)", out))
        assert imported == args.rows, out
        second, out_again = timed_import(legacy_url)
        again = sum(int(n) for n in re.findall(r"imported (\d+)", out_again))
        present = sum(int(n) for n in re.findall(r"already present (\d+)", out_again))
        assert again == 0 and present == args.rows, out_again
        firsts.append(first)
        seconds.append(second)
        print(
            f"run {number}: first import {first:.1f}s ({args.rows / first:,.0f} rows/s, {imported:,} imported); "
            f"second {second:.1f}s (imported {again}, already present {present:,})"
        )
    print(
        f"median of {args.runs}: first import {statistics.median(firsts):.1f}s (target < 60 s), "
        f"second {statistics.median(seconds):.1f}s"
    )
    print("summary of the last first import:")
    for line in out.splitlines():
        print(f"  {line}")

    setup_test_environment()
    client = Client()
    answers = {}
    for i in range(3, 3 * 100 + 1, 3):  # involve_asia's rows (partner id 1: i % 3 == 0)
        params = {"conversion_id": f"LC-{i}", "aff_sub": f"RPID{i}", "conversion_status": "pending"}
        answers[i] = client.get("/partner/involve/event", params).json().get("status")
    duplicates = sum(1 for status in answers.values() if status == "duplicate")
    queued = sum(Delivery.objects.using(partner.database_alias).count() for partner in partners)
    print(f"re-sent 100 imported conversion_ids: {duplicates} answered duplicate; deliveries queued: {queued}")
    assert duplicates == 100 and queued == 0, (answers, queued)
    print(f"load average at end: {os.getloadavg()}")


def timed_import(legacy_url: str) -> tuple[float, str]:
    from django.core.management import call_command

    out = io.StringIO()
    started = time.perf_counter()
    call_command("import_legacy", "--from-url", legacy_url, stdout=out, stderr=io.StringIO())
    return time.perf_counter() - started, out.getvalue()


def drop(server: str, names: list[str]) -> None:
    import psycopg
    from django.db import connections

    from infra.databases import connection_broker

    connections.close_all()
    connection_broker.close_idle()
    with psycopg.connect(f"{server.replace('postgres://', 'postgresql://', 1)}/postgres", autocommit=True) as conn:
        for name in names:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        # The partners' roles (schema@database) went with nothing left to own.
        roles = conn.execute("SELECT rolname FROM pg_roles WHERE rolname LIKE %s", [f"%@{names[1]}"]).fetchall()
        for (role,) in roles:
            conn.execute(f'DROP ROLE IF EXISTS "{role}"')


if __name__ == "__main__":
    main()
