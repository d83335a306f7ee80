"""What the security checks cost per postback: in-process Django requests, PostgreSQL partner databases.

    python bench/postback_security_overhead.py --requests 400 --rounds 5

Four partners differing only in their security settings receive the same postbacks,
interleaved round by round (so machine noise hits all of them alike); prints the median
milliseconds per postback of each and its ratio to the unchecked one.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parents[1]
SECRET = "bench-secret-0123456789abcdef"  # noqa: S105 (a throwaway benchmark value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400, help="postbacks per partner per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()

    token = uuid.uuid4().hex[:8]
    tmp = Path(tempfile.mkdtemp(prefix="pb_bench_"))
    os.environ.update(
        {
            "DJANGO_SETTINGS_MODULE": "postback_site.settings",
            "DATABASE_URL": f"sqlite:///{tmp}/default.sqlite3",
            "PARTNER_DATABASE_URL": f"postgres://root@127.0.0.1:5432/bench_sec_{token}_{{name}}",
            "PARTNER_DATABASE_TEMPLATE": f"bench_sec_{token}_template",
            "LOG_LEVEL": "WARNING",
            "REDIS_KEY_PREFIX": f"bench-{token}",
        }
    )
    sys.path.insert(0, str(PROJECT_DIR))
    import django

    django.setup()
    import psycopg
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connections
    from django.test import Client

    from partners.services import partner_create, partner_provision

    call_command("migrate", verbosity=0)
    variants = {
        "no checks": {"max_daily_requests": 0},
        "quota (partner database)": {},
        "quota (Redis)": {},
        "secret + allowlist + quota (database)": {
            "postback_secret": SECRET,
            "allowed_ips": "127.0.0.0/8, 2001:db8::/32",
        },
    }
    partners = {}
    for index, (name, fields) in enumerate(variants.items()):
        code = f"p{index}"
        partner = partner_create(
            partner_code=code,
            partner_name=name,
            endpoint_path=f"/{code}/event",
            database_name=f"{code}_db",
            parameter_mapping={"sub_id": "aff_sub"},
            enable_logging=False,
            **{"max_daily_requests": 10**9, **fields},
        )
        partner_provision(partner=partner)
        partners[name] = partner

    client = Client(HTTP_HOST="localhost")
    timings: dict[str, list[float]] = {name: [] for name in variants}
    try:
        for round_index in range(args.rounds):
            for name, partner in partners.items():
                settings.REDIS_URL = args.redis_url if "Redis" in name else ""
                extra = {"HTTP_X_POSTBACK_TOKEN": SECRET} if "secret" in name else {}
                url = f"/partner{partner.endpoint_path}?aff_sub=s&usd_payout=1.25&conversion_id="
                client.get(url + f"warm-{round_index}", **extra)
                started = time.perf_counter()
                for i in range(args.requests):
                    response = client.get(url + f"r{round_index}-{i}", **extra)
                    assert response.status_code == 200, response.content
                timings[name].append((time.perf_counter() - started) * 1000 / args.requests)
    finally:
        connections.close_all()
        with psycopg.connect(host="127.0.0.1", user="root", dbname="postgres", autocommit=True) as conn:
            for (db,) in conn.execute(
                "SELECT datname FROM pg_database WHERE datname LIKE %s", [f"bench_sec_{token}_%"]
            ):
                conn.execute(f'DROP DATABASE "{db}" WITH (FORCE)')
        import redis

        redis_client = redis.Redis.from_url(args.redis_url)
        for key in redis_client.scan_iter(f"bench-{token}:*"):
            redis_client.delete(key)

    base = statistics.median(timings["no checks"])
    print(f"{args.rounds} rounds x {args.requests} postbacks per partner (median ms per postback, all rounds: min-max)")
    for name, values in timings.items():
        median = statistics.median(values)
        print(f"  {name:<40} {median:6.3f} ms  x{median / base:4.2f}   ({min(values):.3f}-{max(values):.3f})")


if __name__ == "__main__":
    main()
