"""Postbacks spread over hundreds or thousands of partners on one PostgreSQL server.

    .venv/bin/python bench/many_partners_bench.py                  # 1,000 partners, both layouts, 3 rounds of 30 s
    .venv/bin/python bench/many_partners_bench.py --partners 200 --duration 10 --rounds 1 --layouts shared

Two storage layouts, side by side: `shared` (PARTNER_DATABASE_URL without {name}: one
database, a schema and a role per partner) and `per-database` (a database per partner).
For each it creates its own databases (dropped afterwards, with the partners' roles):
a configuration database and the partners' storage, provisioned by `init_partners`
(its time is printed). Starts the production server (gunicorn with
postback_site/gunicorn.conf.py, DB_MAX_CONNECTIONS as configured) and drives it with
wrk: `spread` sends each new conversion to the next partner in turn, `one` sends the
same postbacks to a single partner. It prints requests/s, p99, the ratio spread/one of
the same round, the peak number of server connections to the benchmark's databases
(sampled from pg_stat_activity every 20 ms) against the instance's bound
(WEB_CONCURRENCY x DB_MAX_CONNECTIONS), the connections opened per postback and the
machine's CPU per postback (all processes but wrk: it includes the PostgreSQL backends
that connecting starts). Then the same through a real PgBouncer in transaction mode
(Debian's pgbouncer, started here). Finally it checks that the partners' storage holds
exactly as many originals as 200 `success` answers, and exits non-zero otherwise or on
any non-2xx answer.
"""

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.postback_bench import (  # noqa: E402
    CLOCK_TICKS,
    LUA_CLOCK,
    drop_databases,
    ensure_wrk,
    free_port,
    stop,
    wait_until_up,
)
from tests.support.pgbouncer import PgBouncer, PgBouncerMissing  # noqa: E402

PROJECT_DIR = Path(__file__).resolve().parents[1]
SERVER = {"host": "127.0.0.1", "port": 5432, "user": "root", "dbname": "postgres"}
# The last seconds of a run send only repeats: a new conversion still in flight when wrk stops
# would be stored with its answer uncounted (the database-per-partner form has answers past 1 s).
TAIL_MS = 3000
QUERY_TAIL = "&usd_sale_amount=93.47&usd_payout=4.67&aff_sub=sub123&offer_id=1021"

LUA = r"""
local partners, mode, prefix, tail = %(partners)d, "%(mode)s", "%(prefix)s", "%(tail)s"
local threads, counter = {}, 0
success, non2xx = 0, 0
%(clock)slocal fresh_until

function init(args)
  fresh_until = now_ms() + %(fresh_ms)d
end

function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end

function request()
  counter = counter + 1
  local n = counter
  -- The last %(tail_ms)d ms repeat the thread's first conversion: nothing new is in
  -- flight when wrk stops, so stored originals must equal the successes.
  if counter > 1 and now_ms() > fresh_until then n = 1 end
  local partner = 0
  if mode == "spread" then partner = (n * %(wrk_threads)d + tid) %% partners end
  local path = string.format("/partner/p%%04d/event?conversion_id=%%s%%d-%%d", partner, prefix, tid, n)
  return wrk.format("GET", path .. tail)
end

function response(status, headers, body)
  if status == 200 and string.find(body, '"status":%%s*"success"') then
    success = success + 1
  end
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
  end
end

function done(summary, latency, requests)
  local s, n = 0, 0
  for _, thread in ipairs(threads) do
    s = s + thread:get("success")
    n = n + thread:get("non2xx")
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests": %%d, "seconds": %%.3f, "p50_us": %%d, "p99_us": %%d, "success": %%d, "non2xx": %%d, ' ..
    '"socket_errors": %%d}\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50), latency:percentile(99), s, n,
    e.connect + e.read + e.write + e.timeout))
end
"""


def machine_cpu_seconds() -> float:
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / CLOCK_TICKS  # all but idle and iowait


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class ConnectionSampler:
    """The peak number of server connections to databases named `prefix...`."""

    def __init__(self, prefix: str) -> None:
        self.prefix, self.peak, self._stop = prefix, 0, threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        query = "SELECT count(*) FROM pg_stat_activity WHERE datname LIKE %s AND pid <> pg_backend_pid()"
        with psycopg.connect(**SERVER, autocommit=True) as conn:
            while not self._stop.is_set():
                self.peak = max(self.peak, conn.execute(query, [self.prefix + "%"]).fetchone()[0])
                time.sleep(0.02)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def metric(base: str, name: str) -> float:
    request = urllib.request.Request(base + "/metrics", headers={"Authorization": "Bearer bench"})
    text = urllib.request.urlopen(request, timeout=60).read().decode()  # a server swamped by connecting
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def start_server(env: dict, log_path: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "postback_site/gunicorn.conf.py"],
            cwd=PROJECT_DIR,
            env={**env, "PORT": str(port)},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    wait_until_up(base + "/info", server, log_path, seconds=60)
    return server, base


def run_wrk(wrk: str, base: str, mode: str, run_id: str, args, workdir: Path, prefix: str) -> dict:
    script = workdir / f"{mode}.lua"
    script.write_text(
        LUA
        % {
            "partners": args.partners,
            "mode": mode,
            "prefix": run_id,
            "tail": QUERY_TAIL,
            "fresh_ms": args.duration * 1000 - TAIL_MS,
            "tail_ms": TAIL_MS,
            "wrk_threads": args.wrk_threads,
            "clock": LUA_CLOCK,
        }
    )
    command = [wrk, f"-t{args.wrk_threads}", f"-c{args.connections}", f"-d{args.duration}s", "--timeout", "10s"]
    opened_before = metric(base, "postback_database_connections_opened_total")
    cpu_before, wrk_before = machine_cpu_seconds(), children_cpu_seconds()
    with ConnectionSampler(prefix) as sampler:
        output = subprocess.run([*command, "-s", str(script), base], stdout=subprocess.PIPE, text=True).stdout
    # The machine's CPU but wrk's own (a reaped child): the server, PostgreSQL, the kernel.
    cpu = (machine_cpu_seconds() - cpu_before) - (children_cpu_seconds() - wrk_before)
    line = next(line for line in output.splitlines() if line.startswith("BENCH "))
    result = json.loads(line[len("BENCH ") :])
    result["rps"] = result["requests"] / result["seconds"]
    result["peak_connections"] = sampler.peak
    requests = max(result["requests"], 1)
    opened = metric(base, "postback_database_connections_opened_total") - opened_before
    result["opened_per_request"] = opened / requests
    result["cpu_ms"] = cpu * 1000 / requests
    return result


def bench_layout(name: str, env: dict, args, wrk: str, workdir: Path, prefix: str) -> tuple[dict, int]:
    server, base = start_server(env, workdir / f"server-{name}.log")
    successes = 0
    results: dict[str, list[dict]] = {"spread": [], "one": []}
    try:
        warm = argparse.Namespace(**{**vars(args), "duration": 3})
        for mode in ("one", "spread"):
            successes += run_wrk(wrk, base, mode, f"{name}warm{mode}", warm, workdir, prefix)["success"]
        for number in range(args.rounds):
            for mode in ("spread", "one"):
                result = run_wrk(wrk, base, mode, f"{name}r{number}{mode}", args, workdir, prefix)
                results[mode].append(result)
                successes += result["success"]
                print(
                    f"  {name:<10} round {number + 1} {mode:<7}{result['rps']:8.0f} req/s  p99 "
                    f"{result['p99_us'] / 1000:7.1f} ms  peak server connections {result['peak_connections']:3d}  "
                    f"connections opened/postback {result['opened_per_request']:.3f}  "
                    f"machine cpu/postback {result['cpu_ms']:.2f} ms  non-2xx {result['non2xx']}  "
                    f"socket errors {result['socket_errors']}",
                    flush=True,
                )
    finally:
        stop(server)
    ratios = [s["rps"] / o["rps"] for s, o in zip(results["spread"], results["one"], strict=True)]
    failures = sum(r["non2xx"] + r["socket_errors"] for runs in results.values() for r in runs)
    peak = max(r["peak_connections"] for runs in results.values() for r in runs)
    summary = {
        mode: {
            key: statistics.median(r[key] for r in runs) for key in ("rps", "p99_us", "cpu_ms", "opened_per_request")
        }
        for mode, runs in results.items()
    }
    print(
        f"  {name}: spread {summary['spread']['rps']:.0f} req/s (p99 {summary['spread']['p99_us'] / 1000:.1f} ms, "
        f"{summary['spread']['cpu_ms']:.2f} ms cpu, {summary['spread']['opened_per_request']:.3f} connections opened"
        f"/postback), one partner {summary['one']['rps']:.0f} req/s (p99 {summary['one']['p99_us'] / 1000:.1f} ms, "
        f"{summary['one']['cpu_ms']:.2f} ms cpu): spread/one {statistics.median(ratios):.2f} (rounds "
        f"{', '.join(f'{r:.2f}' for r in ratios)}); peak server connections {peak}; non-2xx {failures}\n"
    )
    return {"failures": failures, "peak": peak}, successes


def cpu_model() -> str:
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    return next((line.split(":", 1)[1].strip() for line in lines if "model name" in line), "unknown CPU")


def stored_originals(prefix: str) -> int:
    """Originals in every partner table of the benchmark's databases (schemas included)."""
    stored = 0
    with psycopg.connect(**SERVER) as conn:
        names = [
            name
            for (name,) in conn.execute(
                # not the schema template of the database-per-partner form (it takes no connections)
                "SELECT datname FROM pg_database WHERE datname LIKE %s AND datallowconn",
                [prefix + "%"],
            )
        ]
    for name in names:
        # autocommit: one transaction over a thousand tables would hold a lock on each
        with psycopg.connect(**{**SERVER, "dbname": name}, autocommit=True) as conn:
            tables = conn.execute("SELECT schemaname FROM pg_tables WHERE tablename = 'partner_conversions'").fetchall()
            for (schema,) in tables:
                table = sql.Identifier(schema, "partner_conversions")
                stored += conn.execute(
                    sql.SQL("SELECT count(*) FROM {} WHERE NOT is_duplicate AND processing_error IS NULL").format(table)
                ).fetchone()[0]
    return stored


def bench_storage(layout: str, args, wrk: str, workdir: Path, base_env: dict) -> tuple[int, int, int]:
    """Provision `args.partners` partners in `layout`, run the loads direct and through
    PgBouncer; (successes, stored originals, failures)."""
    token = uuid.uuid4().hex[:8]
    prefix = f"bench_mp_{token}_"
    template = f"{prefix}partners" if layout == "shared" else f"{prefix}{{name}}"
    env = {
        **base_env,
        "DATABASE_URL": f"postgres://root@127.0.0.1:5432/{prefix}default",
        "PARTNER_DATABASE_URL": f"postgres://root@127.0.0.1:5432/{template}",
        "PARTNER_DATABASE_TEMPLATE": f"{prefix}template",
    }
    bound = int(args.workers) * int(args.max_connections)
    bouncer = None
    try:
        codes = [f"p{i:04d}" for i in range(args.partners)]
        script = (
            "from partners.models import Partner\n"
            f"Partner.objects.bulk_create([Partner(partner_code=c, partner_name=c, endpoint_path=f'/{{c}}/event',"
            f" database_name=f'{{c}}_db', max_daily_requests=0, enable_logging=False) for c in {codes!r}])\n"
        )
        # A fresh install (the configuration database and the two seed partners), then the partners added.
        install = subprocess.run(
            [sys.executable, "manage.py", "init_partners"], cwd=PROJECT_DIR, env=env, capture_output=True, text=True
        )
        if install.returncode:
            sys.exit(install.stdout + install.stderr)
        subprocess.run([sys.executable, "manage.py", "shell", "-c", script], cwd=PROJECT_DIR, env=env, check=True)
        started = time.monotonic()
        init = subprocess.run(
            [sys.executable, "manage.py", "init_partners"], cwd=PROJECT_DIR, env=env, capture_output=True, text=True
        )
        if init.returncode:
            sys.exit(init.stdout[-3000:] + init.stderr)
        provisioned = next(line for line in init.stdout.splitlines() if line.startswith("provisioned "))
        print(f"[{layout}] init_partners: {provisioned} (command {time.monotonic() - started:.1f} s)", flush=True)
        outcome, successes = bench_layout(f"{layout}", env, args, wrk, workdir, prefix)
        failures = outcome["failures"]
        if not args.no_pgbouncer:
            try:
                # a pool per database: a shared database's one pool serves every partner
                bouncer = PgBouncer(pool_size=bound if layout == "shared" else 2, max_server_connections=bound)
            except PgBouncerMissing as exc:
                sys.exit(str(exc))
            pooled = {
                **env,
                "PARTNER_DATABASE_URL": f"postgres://root@127.0.0.1:{bouncer.port}/{template}",
                "DB_TRANSACTION_POOLER": "true",
            }
            if layout != "shared":
                # a client connection to PgBouncer is cheap: keep one per partner database
                pooled["DB_MAX_CONNECTIONS"] = str(max(int(args.max_connections), args.partners + 10))
            outcome, more = bench_layout(f"{layout}+pgb", pooled, args, wrk, workdir, prefix)
            successes += more
            failures += outcome["failures"]
        return successes, stored_originals(prefix), failures
    finally:
        if bouncer is not None:
            bouncer.stop()
        drop_databases(prefix)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--partners", type=int, default=1000)
    parser.add_argument("--layouts", default="shared,per-database", help="shared, per-database or both")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--duration", type=int, default=30, help="seconds per load")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--wrk-threads", type=int, default=2)
    parser.add_argument("--workers", default="2", help="WEB_CONCURRENCY")
    parser.add_argument("--threads", default="4", help="GUNICORN_THREADS")
    parser.add_argument("--max-connections", default="10", help="DB_MAX_CONNECTIONS (per worker)")
    parser.add_argument("--no-pgbouncer", action="store_true", help="skip the run through PgBouncer")
    args = parser.parse_args()
    layouts = [layout.strip() for layout in args.layouts.split(",") if layout.strip()]
    unknown = set(layouts) - {"shared", "per-database"}
    if unknown:
        sys.exit(f"unknown layout(s): {', '.join(sorted(unknown))}")
    wrk = ensure_wrk()
    workdir = Path(tempfile.mkdtemp(prefix="many-partners-bench-"))
    env = {key: value for key, value in os.environ.items() if key != "DJANGO_SETTINGS_MODULE"}
    env.update(
        SECRET_KEY="bench-" + "k" * 50,
        METRICS_TOKEN="bench",  # noqa: S106 (the benchmark's own server)
        HOST="127.0.0.1",
        PYTHONUNBUFFERED="1",
        WEB_CONCURRENCY=args.workers,
        GUNICORN_THREADS=args.threads,
        DB_MAX_CONNECTIONS=args.max_connections,
    )
    bound = int(args.workers) * int(args.max_connections)
    with psycopg.connect(**SERVER) as conn:
        server_limit = conn.execute("SHOW max_connections").fetchone()[0]
    print(
        f"many-partners bench: {cpu_model()}, {os.cpu_count()} CPUs, PostgreSQL max_connections {server_limit}; "
        f"{args.partners} partners; layouts {', '.join(layouts)}; gunicorn {args.workers} workers x {args.threads} "
        f"threads, DB_MAX_CONNECTIONS {args.max_connections} (bound {bound}); wrk -t{args.wrk_threads} "
        f"-c{args.connections} -d{args.duration}s, {args.rounds} round(s)\n",
        flush=True,
    )
    mismatch = False
    failures = 0
    try:
        for layout in layouts:
            successes, stored, failed = bench_storage(layout, args, wrk, workdir, env)
            verdict = "OK" if stored == successes else "MISMATCH"
            print(
                f"[{layout}] stored originals {stored} == 200 success answers {successes}: {verdict}; "
                f"non-2xx or socket errors: {failed}\n",
                flush=True,
            )
            mismatch |= stored != successes
            failures += failed
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if mismatch or failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
