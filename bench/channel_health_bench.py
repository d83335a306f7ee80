"""`channel_health --once` over 1,000 partners in one shared PostgreSQL database.

    python bench/channel_health_bench.py                     # 1,000 partners, 4 weeks of history, 3 rounds
    python bench/channel_health_bench.py --partners 200 --rounds 2

Creates throwaway databases (configuration + one shared partner database), provisions the
partners (a schema each, `init_partners`), gives every partner four weeks of postbacks
(one an hour by day, none at night: 12 a day; one INSERT ... SELECT generate_series per
schema), then times the checker in a process of its own, as cron or the worker runs it:
the first pass reads the four weeks into the hourly counts, the next ones are the steady
state (what the background worker does every HEALTH_CHECK_SECONDS). Prints the CPU model
and each round; the target is under 10 s for 1,000 partners. Drops the databases at the end.
"""

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psycopg
from psycopg import sql

PROJECT_DIR = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(PROJECT_DIR)]

from bench.postback_bench import cpu_model  # noqa: E402

SERVER = {"host": "127.0.0.1", "port": 5432, "user": "root", "dbname": "postgres"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--partners", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3, help="steady-state passes after the first")
    args = parser.parse_args()
    token = uuid.uuid4().hex[:6]
    prefix = f"health_bench_{token}_"
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://root@127.0.0.1:5432/{prefix}default",
        "PARTNER_DATABASE_URL": f"postgres://root@127.0.0.1:5432/{prefix}partners",
        "PARTNER_DATABASE_TEMPLATE": f"{prefix}template",
        "SECRET_KEY": "health-bench-" + "x" * 40,
        "LOG_LEVEL": "WARNING",
        # The checker's runs, not the interval, decide what is checked here.
        "HEALTH_CHECK_SECONDS": "0.001",
    }
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    print(f"CPU: {cpu_model()} ({os.cpu_count()} cores); {args.partners} partners; load average {os.getloadavg()}")
    try:
        manage(env, "init_partners")
        codes = [f"h{i:04d}" for i in range(args.partners)]
        script = (
            "from partners.models import Partner\n"
            "Partner.objects.bulk_create([Partner(partner_code=c, partner_name=c, endpoint_path=f'/{c}/event',"
            f" database_name=f'{{c}}_db', timezone='Asia/Kuala_Lumpur') for c in {codes!r}])\n"
        )
        manage(env, "shell", "-c", script)
        started = time.monotonic()
        manage(env, "init_partners")
        print(f"provisioned {args.partners + 2} partners in {time.monotonic() - started:.1f} s")
        started = time.monotonic()
        rows = history_fill(prefix)
        print(f"history: {rows:,} postbacks over 4 weeks in {time.monotonic() - started:.1f} s")
        first = timed(env)
        print(f"first pass (reads four weeks into the hourly counts): {first:.2f} s")
        steady = []
        for number in range(1, args.rounds + 1):
            seconds = timed(env)
            steady.append(seconds)
            print(f"round {number}: {seconds:.2f} s")
        print(
            f"median of {len(steady)} steady passes: {statistics.median(steady):.2f} s "
            f"for {args.partners + 2} partners "
            f"(target < 10 s for 1,000); load average at end {os.getloadavg()}"
        )
    finally:
        drop(prefix)


def manage(env: dict, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=PROJECT_DIR, env=env, capture_output=True, text=True
    )
    if done.returncode:
        sys.exit(f"manage.py {' '.join(args)} failed:\n{done.stdout[-2000:]}{done.stderr[-3000:]}")
    return done.stdout


def timed(env: dict) -> float:
    """The command's own figure (the check and its notifications; not Python's start-up)."""
    out = manage(env, "channel_health", "--once")
    line = next(line for line in out.splitlines() if line.startswith("checked "))
    return float(line.split(" in ", 1)[1].split(" s", 1)[0])


def history_fill(prefix: str) -> int:
    """One postback an hour from 09:00 to 20:59 (GMT+8) for the last 28 days, in every schema."""
    total = 0
    with psycopg.connect(**{**SERVER, "dbname": f"{prefix}default"}) as default:
        partner_ids = dict(default.execute("SELECT database_name, id FROM partners").fetchall())
    with psycopg.connect(**{**SERVER, "dbname": f"{prefix}partners"}, autocommit=True) as conn:
        for schema, partner_id in partner_ids.items():
            statement = sql.SQL(
                """
                INSERT INTO {} (partner_id, conversion_id, is_processed, is_duplicate, raw_data, request_headers,
                                request_digests, received_at, created_at, updated_at)
                SELECT %s, 'H-' || g, true, false, '{{}}'::jsonb, '{{}}'::jsonb, '[]'::jsonb, t, t, t
                FROM (
                    SELECT g, date_trunc('hour', now()) - make_interval(hours => g) AS t
                    FROM generate_series(1, 28 * 24) AS g
                ) AS hours
                WHERE extract(hour FROM t AT TIME ZONE 'Asia/Kuala_Lumpur') BETWEEN 9 AND 20
                """
            ).format(sql.Identifier(schema, "partner_conversions"))
            total += conn.execute(statement, [partner_id]).rowcount
    return total


def drop(prefix: str) -> None:
    with psycopg.connect(**SERVER, autocommit=True) as conn:
        names = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", [prefix + "%"]).fetchall()
        for (name,) in names:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        roles = conn.execute("SELECT rolname FROM pg_roles WHERE rolname LIKE %s", [f"%@{prefix}%"]).fetchall()
        for (role,) in roles:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


if __name__ == "__main__":
    main()
