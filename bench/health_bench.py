"""Time `GET /health` with many partners, through the real Django stack.

    .venv/bin/python bench/health_bench.py                      # 1,000 partners, schemas of one database
    .venv/bin/python bench/health_bench.py --provision table    # set up in seconds (see below)
    .venv/bin/python bench/health_bench.py --probes 200         # a p99 that is not just the slowest probe
    .venv/bin/python bench/health_bench.py --layout own --provision table --partners 200
                                                                # a database per partner (CREATE DATABASE
                                                                # takes 0.3-2 s each: 1,000 take long)
    .venv/bin/python bench/health_bench.py --provision none     # nothing provisioned: the 503 answer

Creates throwaway PostgreSQL databases: a configuration database, and the partners'
storage: with `--layout shared` (PARTNER_DATABASE_URL without {name}) one database
holding a schema per partner, with `--layout own` a database per partner. Migrates the
configuration database, creates the partners and provisions them: `--provision full`
(default) runs `partner_provision` for each (a schema, its role and tables, or a database:
about 0.3 s each on a small machine); `table` provisions the first partner (the one the
summary check runs the full check of) and gives each other one only what the summary
check looks at (its schema with a `partner_conversions` table, or an empty database);
`none` provisions nothing. Then sends `GET /health` with Django's test client (every middleware): one first probe,
timed apart (it reads the migration files, registers aliases, loads the partners), then
--probes more. Prints the CPU model and load average, the first probe, the median, p99
(nearest rank: of 20 probes, the slowest) and max of the others, the database statements
and connections opened per probe, this process's CPU time per probe (what a busy machine
does not inflate), and the time of one partner's full check
(`/health?partner=CODE`). The target is a p99 under 100 ms (platform probes give up
after 1 s). Drops its databases and the partners' roles at the end.
"""

import argparse
import math
import os
import signal
import statistics
import sys
import time
import uuid
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parents[1]
SERVER = "postgres://root@127.0.0.1:5432"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--partners", type=int, default=1000)
    parser.add_argument("--probes", type=int, default=20)
    parser.add_argument("--layout", choices=("shared", "own"), default="shared")
    parser.add_argument("--provision", choices=("full", "table", "none"), default="full")
    parser.add_argument("--server", default=SERVER, help="PostgreSQL server URL without a database name")
    args = parser.parse_args()

    prefix = args.prefix = f"health_bench_{uuid.uuid4().hex[:6]}_"
    os.environ["DATABASE_URL"] = f"{args.server}/{prefix}default"
    os.environ["PARTNER_DATABASE_URL"] = (
        f"{args.server}/{prefix}shared" if args.layout == "shared" else f"{args.server}/{prefix}{{name}}"
    )
    os.environ["PARTNER_DATABASE_TEMPLATE"] = f"{prefix}template"
    os.environ["ALLOWED_HOSTS"] = "testserver"
    os.environ.setdefault("SECRET_KEY", "health-bench-" + "x" * 40)
    os.environ["LOG_LEVEL"] = "WARNING"
    os.environ["DJANGO_SETTINGS_MODULE"] = "postback_site.settings"
    sys.path[:0] = [str(PROJECT_DIR)]
    import django

    django.setup()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # `timeout`, a killed job: clean up too
    try:
        run(args)
    finally:
        for interrupt in (signal.SIGINT, signal.SIGTERM):
            signal.signal(interrupt, signal.SIG_IGN)  # a second Ctrl-C must not stop the clean-up halfway
        drop(args.server, prefix)


class Counter:
    """Statements sent to PostgreSQL and connections opened, at the driver."""

    def __init__(self) -> None:
        import psycopg

        self.statements = self.connections = 0
        execute, connect = psycopg.Cursor.execute, psycopg.connect

        def counted_execute(cursor, *args, **kwargs):
            self.statements += 1
            return execute(cursor, *args, **kwargs)

        def counted_connect(*args, **kwargs):
            self.connections += 1
            return connect(*args, **kwargs)

        psycopg.Cursor.execute = counted_execute
        psycopg.connect = counted_connect


def run(args: argparse.Namespace) -> None:
    from django.core.management import call_command
    from django.test import Client

    from infra.databases import database_create_if_missing
    from partners.models import Partner
    from partners.selectors import partner_directory
    from partners.services import partner_provision

    database_create_if_missing("default")
    call_command("migrate", verbosity=0)
    names = [f"p{i:04d}" for i in range(args.partners)]
    Partner.objects.bulk_create(
        Partner(partner_code=name, partner_name=name, endpoint_path=f"/{name}/event", database_name=f"{name}_db")
        for name in names
    )
    partner_directory.clear()
    started = time.perf_counter()
    partners = list(Partner.objects.order_by("database_name"))
    if args.provision == "full":
        for partner in partners:
            partner_provision(partner=partner)
    elif args.provision == "table":
        partner_provision(partner=partners[0])
        tables_only(args, [partner.database_name for partner in partners[1:]])
    took = time.perf_counter() - started
    print(f"provisioned ({args.provision}) {args.partners} partners ({args.layout}) in {took:.1f} s")

    counter = Counter()
    client = Client()
    started = time.perf_counter()
    first = client.get("/health")
    first_ms = (time.perf_counter() - started) * 1000
    expected = 503 if args.provision == "none" else 200
    assert first.status_code == expected, first.content[:500]

    seconds, cpu, statements, opened = [], [], [], []
    for _ in range(args.probes):
        before = (counter.statements, counter.connections)
        started, cpu_started = time.perf_counter(), time.process_time()
        response = client.get("/health")
        seconds.append(time.perf_counter() - started)
        cpu.append(time.process_time() - cpu_started)
        statements.append(counter.statements - before[0])
        opened.append(counter.connections - before[1])
        assert response.status_code == expected, response.content[:500]
    deep = []
    for _ in range(5):
        started = time.perf_counter()
        response = client.get(f"/health?partner={names[0]}")
        deep.append(time.perf_counter() - started)
    body = first.json()

    from bench.postback_bench import cpu_model

    ordered = sorted(seconds)
    p99 = ordered[math.ceil(0.99 * len(ordered)) - 1]
    print(f"cpu: {cpu_model()}, {os.cpu_count()} cores; load average: {load()}")
    print(f"partners: {args.partners}, layout: {args.layout}, answer: {expected}, checked: {body.get('checked')}")
    print(f"first probe: {first_ms:.1f} ms")
    print(
        f"{args.probes} probes: median {statistics.median(ordered) * 1000:.1f} ms, "
        f"p99 {p99 * 1000:.1f} ms, max {ordered[-1] * 1000:.1f} ms (target: p99 < 100 ms)"
    )
    print(f"per probe: {sorted(set(statements))} statements, {sorted(set(opened))} connections opened")
    cpu_ms = statistics.median(cpu) * 1000
    print(f"this process's CPU per probe (a busy machine does not inflate it): median {cpu_ms:.1f} ms")
    print(f"/health?partner={names[0]}: median {statistics.median(deep) * 1000:.1f} ms of 5")


def tables_only(args: argparse.Namespace, names: list[str]) -> None:
    """What the summary check looks at: the partner's schema holding `partner_conversions`,
    or its database."""
    import psycopg
    from psycopg import sql

    server = args.server.replace("postgres://", "postgresql://", 1)
    if args.layout == "shared":
        with psycopg.connect(f"{server}/{args.prefix}shared", autocommit=True) as conn:
            statement = sql.SQL("CREATE SCHEMA {0}; CREATE TABLE {0}.partner_conversions (id bigint)")
            conn.execute(sql.SQL("; ").join(statement.format(sql.Identifier(name)) for name in names))
        return
    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        for count, name in enumerate(names, 1):
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(args.prefix + name)))
            if count % 100 == 0:
                print(f"  {count} databases created", flush=True)


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def drop(server: str, prefix: str) -> None:
    import psycopg
    from django.db import connections
    from psycopg import sql

    from infra.databases import connection_broker

    connections.close_all()
    connection_broker.close_idle()
    with psycopg.connect(server.replace("postgres://", "postgresql://", 1) + "/postgres", autocommit=True) as conn:
        rows = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", [prefix + "%"]).fetchall()
        for (name,) in rows:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        roles = conn.execute("SELECT rolname FROM pg_roles WHERE rolname LIKE %s", [f"%@{prefix}%"]).fetchall()
        for (role,) in roles:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
    print(f"dropped {len(rows)} databases and {len(roles)} roles named {prefix}*")


if __name__ == "__main__":
    main()
