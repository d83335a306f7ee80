"""Forwarding to publishers: one worker's deliveries/s, and what a matching publisher costs the ingest.

    .venv/bin/python bench/forwarding_bench.py                # 3 rounds, 3,000 deliveries, 10 s loads
    .venv/bin/python bench/forwarding_bench.py --rounds 5 --deliveries 5000 --duration 15

1. Deliveries per second of one `deliver_postbacks --once` process (DELIVERY_CONCURRENCY
   sends in flight, default 32) against a fake publisher (tests/support/fake_publisher.py, in this
   process) that answers each postback in 50 ms; the rate is the number delivered over
   the time from the first request the fake publisher received to the last answer.
2. The ingest's new-conversion throughput (gunicorn with postback_site/gunicorn.conf.py,
   loaded by wrk) with no publisher configured and with one publisher that matches
   every conversion (each postback then also writes its delivery in the conversion's
   transaction), alternating in the same run, and the ratio of the medians.

Runs on PostgreSQL on 127.0.0.1:5432, on databases of its own, dropped afterwards.
"""

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import psycopg
from psycopg import sql

PROJECT_DIR = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_DIR))
from bench.postback_bench import cpu_model  # noqa: E402
from tests.support.fake_publisher import FakePublisher  # noqa: E402

SERVER = {"host": "127.0.0.1", "port": 5432, "user": "root", "dbname": "postgres"}
TAIL = (
    "&offer_id=1021&offer_name=Shopee&datetime_conversion=2025-01-15%2013:45:10&usd_sale_amount=93.47"
    "&usd_payout=4.67&aff_sub2=media456&aff_sub3=click789&conversion_currency=MYR"
)
LUA = """
local prefix, tail, counter = "%(prefix)s", "%(tail)s", 0
function setup(thread) thread:set("tid", tostring(math.random(1, 1000000000))) end
function request()
  counter = counter + 1
  return wrk.format("GET", "/partner/involve/event?conversion_id=" .. prefix .. tid .. "-" .. counter
    .. "&aff_sub=RPID" .. counter .. tail)
end
"""
PUBLISHER_SETUP = """
from publishers.models import Publisher
Publisher.objects.update_or_create(code="bench", defaults=dict(
    name="Bench", match_regex="^(RAMPUP|RPID.*)",
    url_template="{url}/pb?c={{conversion_id}}&p={{payout}}&k={{idempotency_key}}",
    events=["recorded", "approved"], payout_kind="percent_sale", payout_value="2.5", is_active={active}))
"""
FILL = """
from partners.models import Partner
from conversions.models import PartnerConversion
from publishers.deliveries import delivery_values
from publishers.models import Delivery, Publisher
from publishers.selectors import publisher_route
partner = Partner.objects.get(partner_code="involve_asia")
alias = partner.database_alias
Delivery.objects.using(alias).all().delete()
route = publisher_route(Publisher.objects.get(code="bench"))
rows = PartnerConversion.objects.using(alias).bulk_create(
    PartnerConversion(partner_id=partner.pk, conversion_id=f"F{round}-{{n}}", sub_id=f"RPID{{n}}", is_processed=True,
                      usd_sale_amount="10.00") for n in range({count}))
Delivery.objects.using(alias).bulk_create(Delivery(conversion_id=c.pk, **delivery_values(route=route,
    conversion=dict(conversion_id=c.conversion_id, sub_id=c.sub_id, usd_sale_amount=c.usd_sale_amount),
    partner=partner, event="recorded", source="postback")) for c in rows)
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def manage(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=600
    )
    if done.returncode:
        raise SystemExit(f"manage.py {args[0]} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def deliveries_round(env, fake: FakePublisher, round_number: int, count: int) -> float:
    manage(env, "shell", "-c", FILL.format(round=round_number, count=count))
    before = len(fake.requests())
    out = manage(env, "deliver_postbacks", "--once")
    received = fake.requests()[before:]
    assert f"delivered {count}" in out, out
    span = max(r.finished for r in received) - min(r.started for r in received)
    return len(received) / span


def ingest_round(env, base: str, label: str, duration: int, connections: int, round_number: int) -> float:
    script = Path(tempfile.mkdtemp()) / "load.lua"
    script.write_text(LUA % {"prefix": f"{label}{round_number}-{uuid.uuid4().hex[:6]}-", "tail": TAIL})
    threads = min(2, connections)
    wrk = shutil.which("wrk") or "/usr/bin/wrk"
    out = subprocess.run(
        [wrk, "-t", str(threads), "-c", str(connections), "-d", f"{duration}s", "-s", str(script), base],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    shutil.rmtree(script.parent)
    if "Non-2xx" in out:
        raise SystemExit(f"errors under load:\n{out}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--deliveries", type=int, default=3000)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    print(f"CPU: {cpu_model()} x {os.cpu_count()}; load average before: {os.getloadavg()}")

    prefix = f"bench_fw_{uuid.uuid4().hex[:8]}_"
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    env.update(
        PYTHONUNBUFFERED="1",
        SECRET_KEY="bench-" + "k" * 50,
        DATABASE_URL=f"postgres://root@127.0.0.1:5432/{prefix}default",
        PARTNER_DATABASE_URL=f"postgres://root@127.0.0.1:5432/{prefix}{{name}}",
        PARTNER_DATABASE_TEMPLATE=f"{prefix}template",
        OUTBOUND_ALLOW_PRIVATE="1",
        PARTNER_CACHE_SECONDS="1",
        LOG_LEVEL="WARNING",
    )
    server = None
    try:
        manage(env, "init_partners")
        with FakePublisher(delay=0.05) as fake:
            manage(env, "shell", "-c", PUBLISHER_SETUP.format(url=fake.url, active=True))
            print(
                f"\n1. one worker process, DELIVERY_CONCURRENCY={env.get('DELIVERY_CONCURRENCY', 32)}, "
                f"{args.deliveries} due deliveries, publisher answering in 50 ms"
            )
            rates = []
            for round_number in range(args.rounds):
                rates.append(deliveries_round(env, fake, round_number, args.deliveries))
                print(f"   round {round_number + 1}: {rates[-1]:.0f} deliveries/s")
            print(f"   median: {statistics.median(rates):.0f} deliveries/s (target >= 200)")

            port = free_port()
            server = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "-c", "postback_site/gunicorn.conf.py"],
                cwd=PROJECT_DIR,
                env={**env, "PORT": str(port), "HOST": "127.0.0.1", "WEB_CONCURRENCY": "2", "GUNICORN_THREADS": "4"},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            base = f"http://127.0.0.1:{port}"
            for _ in range(300):
                try:
                    urllib.request.urlopen(base + "/info", timeout=2).read()
                    break
                except OSError:
                    time.sleep(0.1)
            print(f"\n2. ingest of new conversions, wrk {args.connections} connections, {args.duration} s per load")
            results = {"none": [], "one": []}
            for round_number in range(args.rounds):
                for label, active in (("none", False), ("one", True)):
                    manage(env, "shell", "-c", PUBLISHER_SETUP.format(url=fake.url, active=active))
                    time.sleep(2.5)  # every worker's publisher directory reloads (PARTNER_CACHE_SECONDS=1)
                    results[label].append(ingest_round(env, base, label, args.duration, args.connections, round_number))
                    print(f"   round {round_number + 1}, {label} matching publisher: {results[label][-1]:.0f} req/s")
            none, one = statistics.median(results["none"]), statistics.median(results["one"])
            print(
                f"   median: none {none:.0f} req/s, one matching publisher {one:.0f} req/s: "
                f"ratio {one / none:.3f} (cost {100 * (1 - one / none):.1f}%, target <= 5%)"
            )
            out = manage(
                env,
                "shell",
                "-c",
                "from partners.models import Partner; from publishers.models import Delivery; "
                "p = Partner.objects.get(partner_code='involve_asia'); "
                "print(Delivery.objects.using(p.database_alias).filter(state='pending').count())",
            )
            print(f"   deliveries written by the 'one' loads: {out.strip().splitlines()[-1]}")
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        print(f"load average after: {os.getloadavg()}")
        with psycopg.connect(**SERVER, autocommit=True) as conn:
            names = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", [prefix + "%"]).fetchall()
            for (name,) in names:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


if __name__ == "__main__":
    main()
