"""Throughput of the postback endpoint against two floors: a minimal view and a bare Django app.

    .venv/bin/python bench/postback_bench.py                 # 16 connections, 10 s per load, 3 rounds
    .venv/bin/python bench/postback_bench.py --rounds 1 --duration 5 --connections 32

Starts the production server (gunicorn with postback_site/gunicorn.conf.py) against
PostgreSQL on its own freshly created databases (dropped afterwards), drives it with wrk
(installed with apt-get when missing and running as root) and prints requests/s and
p50/p90/p99 latency and the CPU per request (the server's, and its database backends')
for: new conversions, status updates of the conversions just created (the lifecycle's
update path), duplicates, a 90/10 new/repeat mix, rejected postbacks, and two floors
with the ratios to each:

  minimal  a view inside the service (bench/minimal_view.py: every middleware, the
           partner lookup, one INSERT into the partner's database), same server;
  bare     a bare Django project (bench/bare_site.py: no apps, no middleware, one view,
           one INSERT ... ON CONFLICT) under plain gunicorn gthread with the same
           workers x threads, started next to it.

Every round runs every load once, in the same order; the medians of the rounds are
printed, with the CPU model (ratios move with it: compare within one run). Afterwards
it checks that the partner database holds exactly as many originals as the 200
`success` responses counted by wrk (nothing lost, nothing doubled).
"""

import argparse
import json
import os
import shutil
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
SERVER = {"host": "127.0.0.1", "port": 5432, "user": "root", "dbname": "postgres"}
QUERY_TAIL = (
    "&offer_id=1021&offer_name=Shopee&datetime_conversion=2025-01-15%2013:45:10&usd_sale_amount=93.47"
    "&usd_payout=4.67&aff_sub=sub123&aff_sub2=media456&aff_sub3=click789&conversion_currency=MYR"
)
TAIL_MS = 300
LOADS = ("bare", "minimal", "new", "update", "duplicate", "mix", "invalid")
FLOORS = ("bare", "minimal")
# bench/bare_site.py's table: the shape of a partner's conversions, reduced to one unique key.
BARE_TABLE = """
CREATE TABLE bare_conversions (
    id bigserial PRIMARY KEY,
    conversion_id varchar(255) NOT NULL UNIQUE,
    raw_data jsonb NOT NULL,
    received_at timestamptz NOT NULL
)
"""

# wrk's Lua has no wall clock: now_ms() from gettimeofday through LuaJIT's FFI.
LUA_CLOCK = r"""
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_usec; } bench_timeval;
int gettimeofday(bench_timeval *tv, void *tz);
]]
local function now_ms()
  local tv = ffi.new("bench_timeval")
  ffi.C.gettimeofday(tv, nil)
  return tonumber(tv.tv_sec) * 1000 + tonumber(tv.tv_usec) / 1000
end
"""

LUA = r"""
local mode, prefix, round, tail = "%(mode)s", "%(prefix)s", "%(round)s", "%(tail)s"
-- update load: how many conversions each thread of this round's `new` load created
local created = {%(created)s}
local threads, counter = {}, 0
success, duplicate, updated, rejected, non2xx, fresh = 0, 0, 0, 0, 0, 0
%(clock)slocal fresh_until

function init(args)
  -- In the last %(tail_ms)d ms only repeats are sent, so every new conversion has been
  -- answered (and counted) when wrk stops: stored originals must equal the successes.
  fresh_until = now_ms() + %(fresh_ms)d
end

function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end

function request()
  counter = counter + 1
  local id = prefix .. tid .. "-" .. counter
  if mode == "duplicate" or ((mode == "new" or mode == "mix") and counter > 1 and now_ms() > fresh_until) then
    id = round .. "dup-" .. (counter %% 100)  -- sent once before the round
  elseif mode == "mix" and counter %% 10 == 0 and counter > 10 then
    id = prefix .. tid .. "-" .. (counter - 5)  -- a repeat of a conversion sent just before
  else
    fresh = counter
  end
  if mode == "update" then
    -- Changes the status of the conversions the `new` load of this round created:
    -- (none) -> approved on the first pass over them, approved -> paid on the second.
    local count = created[tid] or 1
    local status = math.floor((counter - 1) / count) %% 2 == 0 and "approved" or "paid"
    id = round .. "new" .. tid .. "-" .. ((counter - 1) %% count + 1)
    return wrk.format("GET", "/partner/involve/event?conversion_id=" .. id .. tail .. "&conversion_status=" .. status)
  end
  if mode == "minimal" then
    return wrk.format("GET", "/bench/insert?conversion_id=" .. id)
  elseif mode == "bare" then
    return wrk.format("GET", "/bare/insert?conversion_id=" .. id)
  elseif mode == "invalid" then
    return wrk.format("GET", "/partner/involve/event?conversion_id=" .. id .. tail .. "&usd_sale_amount=lots")
  end
  return wrk.format("GET", "/partner/involve/event?conversion_id=" .. id .. tail)
end

function response(status, headers, body)
  if status == 200 then
    if string.find(body, '"status":%%s*"success"') then
      success = success + 1
    elseif string.find(body, '"status":%%s*"duplicate"') then
      duplicate = duplicate + 1
    elseif string.find(body, '"status":%%s*"updated"') then
      updated = updated + 1
    end
  elseif status == 400 then
    rejected = rejected + 1
  end
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
  end
end

function done(summary, latency, requests)
  local s, d, u, r, n = 0, 0, 0, 0, 0
  local created_now = {}
  for _, thread in ipairs(threads) do
    s = s + thread:get("success")
    d = d + thread:get("duplicate")
    u = u + thread:get("updated")
    r = r + thread:get("rejected")
    n = n + thread:get("non2xx")
    table.insert(created_now, thread:get("fresh"))
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests": %%d, "seconds": %%.3f, "p50_us": %%d, "p90_us": %%d, "p99_us": %%d, ' ..
    '"success": %%d, "duplicate": %%d, "updated": %%d, "rejected": %%d, "non2xx": %%d, "socket_errors": %%d, ' ..
    '"created": [%%s]}\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), s, d, u, r, n, e.connect + e.read + e.write + e.timeout, table.concat(created_now, ", ")))
end
"""


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("wrk is missing: installing it with apt-get (Debian package 'wrk')", flush=True)
        subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=False, stdout=subprocess.DEVNULL)
        found = shutil.which("wrk")
    if not found:
        sys.exit("wrk is required: run `apt-get install -y wrk` (as root) and retry")
    return found


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def drop_databases(prefix: str) -> None:
    with psycopg.connect(**SERVER, autocommit=True) as conn:
        rows = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", [prefix + "%"]).fetchall()
        for (name,) in rows:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        # Partners in a shared database had a role each (schema@database).
        roles = conn.execute("SELECT rolname FROM pg_roles WHERE rolname LIKE %s", [f"%@{prefix}%"]).fetchall()
        for (role,) in roles:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def count_originals(database: str) -> int:
    with psycopg.connect(**{**SERVER, "dbname": database}) as conn:
        return conn.execute(
            "SELECT count(*) FROM partner_conversions WHERE NOT is_duplicate AND processing_error IS NULL"
        ).fetchone()[0]


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def server_cpu_seconds(master: int, database_prefix: str) -> dict[int, float]:
    """CPU seconds used so far by gunicorn (master and workers) and our PostgreSQL backends, by pid.

    Robust to other load on the machine, unlike requests/s: divided by the requests
    served, it is what one postback costs. Negative pids mark database backends.
    """
    usage = {master: process_cpu_seconds(master)}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == master:
                    usage[int(entry.name)] = process_cpu_seconds(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    with psycopg.connect(**SERVER, autocommit=True) as conn:
        backends = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname LIKE %s AND pid <> pg_backend_pid()",
            [database_prefix + "%"],
        ).fetchall()
    usage.update({-pid: process_cpu_seconds(pid) for (pid,) in backends})
    return usage


def cpu_used(before: dict[int, float], after: dict[int, float]) -> tuple[float, float]:
    """(app, database) CPU seconds between two snapshots; processes that ended are not counted."""
    app = sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items() if pid > 0)
    database = sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items() if pid < 0)
    return app, database


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def wait_until_up(url: str, server: subprocess.Popen, log_path: Path, *, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"the server did not start:\n{log_path.read_text()}")
            time.sleep(0.2)


def stop(server: subprocess.Popen | None) -> None:
    if server is None:
        return
    server.terminate()
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def run_wrk(
    wrk: str,
    server: tuple[int, str],
    mode: str,
    round_id: str,
    args: argparse.Namespace,
    workdir: Path,
    created: list[int] = (),
) -> dict:
    """One wrk run of `mode` against `server` (gunicorn master pid, base URL); `created`
    is, for the update load, how many conversions each wrk thread of the round's `new`
    load created."""
    pid, base = server
    script = workdir / f"{mode}.lua"
    values = {"mode": mode, "prefix": round_id + mode, "round": round_id, "tail": QUERY_TAIL}
    values["created"] = ", ".join(str(count) for count in created)
    values.update(tail_ms=TAIL_MS, fresh_ms=args.duration * 1000 - TAIL_MS, clock=LUA_CLOCK)
    script.write_text(LUA % values)
    command = [
        wrk,
        f"-t{args.wrk_threads}",
        f"-c{args.connections}",
        f"-d{args.duration}s",
        "--timeout",
        "5s",
        "-s",
        str(script),
        base,
    ]
    before = server_cpu_seconds(pid, args.database_prefix)
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    after = server_cpu_seconds(pid, args.database_prefix)
    line = next(line for line in output.splitlines() if line.startswith("BENCH "))
    result = json.loads(line[len("BENCH ") :])
    result["rps"] = result["requests"] / result["seconds"]
    app, database = cpu_used(before, after)
    result["app_cpu_ms"] = app * 1000 / max(result["requests"], 1)
    result["db_cpu_ms"] = database * 1000 / max(result["requests"], 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--duration", type=int, default=10, help="seconds per load")
    parser.add_argument("--rounds", type=int, default=3, help="repeat every load; medians are printed")
    parser.add_argument("--wrk-threads", type=int, default=2)
    parser.add_argument("--workers", help="WEB_CONCURRENCY (default: gunicorn.conf.py's)")
    parser.add_argument("--threads", help="GUNICORN_THREADS (default: gunicorn.conf.py's)")
    parser.add_argument("--loads", default=",".join(LOADS), help=f"comma-separated subset of {','.join(LOADS)}")
    parser.add_argument(
        "--no-step-logs", action="store_true", help="turn InvolveAsia's enable_logging off (one summary line each)"
    )
    parser.add_argument("--keep-log", action="store_true", help="print the server logs' paths and keep them")
    args = parser.parse_args()
    loads = [load for load in args.loads.split(",") if load]
    wrk = ensure_wrk()

    token = uuid.uuid4().hex[:8]
    prefix = f"bench_pb_{token}_"
    args.database_prefix = prefix
    workdir = Path(tempfile.mkdtemp(prefix="postback-bench-"))
    env = {key: value for key, value in os.environ.items() if key != "DJANGO_SETTINGS_MODULE"}
    env.update(
        DATABASE_URL=f"postgres://root@127.0.0.1:5432/{prefix}default",
        PARTNER_DATABASE_URL=f"postgres://root@127.0.0.1:5432/{prefix}{{name}}",
        PARTNER_DATABASE_TEMPLATE=f"{prefix}template",
        SECRET_KEY="bench-" + "k" * 50,
        BENCH_MINIMAL_VIEW="1",
        HOST="127.0.0.1",
        PORT=str(free_port()),
        PYTHONUNBUFFERED="1",
    )
    if args.workers:
        env["WEB_CONCURRENCY"] = args.workers
    if args.threads:
        env["GUNICORN_THREADS"] = args.threads
    workers = env.get("WEB_CONCURRENCY", "2")
    threads = env.get("GUNICORN_THREADS", "4")
    base = f"http://127.0.0.1:{env['PORT']}"
    log_path = workdir / "server.log"
    bare_log_path = workdir / "bare.log"
    server = bare = None
    try:
        subprocess.run(
            [sys.executable, "manage.py", "init_partners"], cwd=PROJECT_DIR, env=env, check=True, capture_output=True
        )
        # A benchmark sends more than a day's default quota; optionally without step logs.
        updates = "max_daily_requests=2_000_000_000" + (", enable_logging=False" if args.no_step_logs else "")
        subprocess.run(
            [
                sys.executable,
                "manage.py",
                "shell",
                "-c",
                f"from partners.models import Partner; Partner.objects.update({updates})",
            ],
            cwd=PROJECT_DIR,
            env=env,
            check=True,
            capture_output=True,
        )
        with open(log_path, "w") as log:
            server = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "-c", "postback_site/gunicorn.conf.py"],
                cwd=PROJECT_DIR,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        if "bare" in loads:
            with psycopg.connect(**SERVER, autocommit=True) as conn:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(f"{prefix}bare")))
            with psycopg.connect(**{**SERVER, "dbname": f"{prefix}bare"}, autocommit=True) as conn:
                conn.execute(BARE_TABLE)
            bare_port = free_port()
            with open(bare_log_path, "w") as log:
                bare = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "gunicorn",
                        "-k",
                        "gthread",
                        "-w",
                        workers,
                        "--threads",
                        threads,
                        "-b",
                        f"127.0.0.1:{bare_port}",
                        "bench.bare_site:application",
                    ],
                    cwd=PROJECT_DIR,
                    env={**env, "BARE_DATABASE": f"{prefix}bare"},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            bare_base = f"http://127.0.0.1:{bare_port}"
            wait_until_up(bare_base + "/bare/insert?conversion_id=up", bare, bare_log_path)
        wait_until_up(base + "/health", server, log_path)
        servers = {"bare": (bare.pid, bare_base) if bare else None}
        service = (server.pid, base)

        successes = 0
        # The duplicate load repeats 100 conversion ids per round: send each once first.
        for round_id in ["warm"] + [f"r{number}" for number in range(args.rounds)]:
            for index in range(100):
                url = f"{base}/partner/involve/event?conversion_id={round_id}dup-{index}{QUERY_TAIL}"
                body = json.loads(urllib.request.urlopen(url, timeout=10).read())
                successes += body["status"] == "success"
        # Warm every worker's connections and caches (not measured, but counted).
        warm = argparse.Namespace(**{**vars(args), "duration": 2})
        if bare:
            run_wrk(wrk, servers["bare"], "bare", "warm", warm, workdir)
        run_wrk(wrk, service, "minimal", "warm", warm, workdir)
        successes += run_wrk(wrk, service, "new", "warm", warm, workdir)["success"]

        steps = "off" if args.no_step_logs else "on"
        print(
            f"postback bench: {cpu_model()}, {os.cpu_count()} CPUs, step logs {steps}, gunicorn workers={workers} "
            f"threads={threads}, wrk -t{args.wrk_threads} -c{args.connections} -d{args.duration}s, "
            f"{args.rounds} round(s)"
        )
        results: dict[str, list[dict]] = {load: [] for load in loads}
        for round_number in range(args.rounds):
            created: list[int] = []
            for load in loads:
                target = servers.get(load) or service
                result = run_wrk(wrk, target, load, f"r{round_number}", args, workdir, created)
                results[load].append(result)
                if load == "new":
                    created = result["created"]
                if load not in FLOORS:
                    successes += result["success"]
                print(
                    f"  round {round_number + 1} {load:<9} {result['rps']:8.0f} req/s  "
                    f"p50 {result['p50_us'] / 1000:6.2f} ms  p90 {result['p90_us'] / 1000:6.2f} ms  "
                    f"p99 {result['p99_us'] / 1000:6.2f} ms  cpu/request app {result['app_cpu_ms']:.2f} ms "
                    f"db {result['db_cpu_ms']:.2f} ms  success {result['success']:6d}  "
                    f"duplicate {result['duplicate']:6d}  updated {result['updated']:6d}  "
                    f"rejected {result['rejected']:6d}  "
                    f"non-2xx {result['non2xx']}  socket errors {result['socket_errors']}",
                    flush=True,
                )

        def ratio(load: str, floor: str, key: str = "rps") -> str:
            pairs = zip(results[load], results.get(floor, []), strict=False)
            ratios = [run[key] / floor_run[key] for run, floor_run in pairs if floor_run[key]]
            return f"{statistics.median(ratios):.2f}x" if ratios else "-"

        print(f"\nmedians over {args.rounds} round(s) ({cpu_model()}), {args.connections} connections:")
        print(
            f"  {'load':<10}{'req/s':>8}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'vs minimal':>12}{'vs bare':>9}"
            f"{'p99 vs min':>12}{'app cpu ms':>12}{'cpu vs min':>12}{'db cpu ms':>11}{'non-2xx':>9}"
        )
        keys = ("rps", "p50_us", "p90_us", "p99_us", "app_cpu_ms", "db_cpu_ms")
        median = {
            load: {key: statistics.median(r[key] for r in runs) for key in keys} for load, runs in results.items()
        }
        for load, values in median.items():
            non2xx = sum(r["non2xx"] + r["socket_errors"] for r in results[load])
            print(
                f"  {load:<10}{values['rps']:8.0f}{values['p50_us'] / 1000:9.2f}{values['p90_us'] / 1000:9.2f}"
                f"{values['p99_us'] / 1000:9.2f}{ratio(load, 'minimal'):>12}{ratio(load, 'bare'):>9}"
                f"{ratio(load, 'minimal', 'p99_us'):>12}{values['app_cpu_ms']:12.2f}"
                f"{ratio(load, 'minimal', 'app_cpu_ms'):>12}{values['db_cpu_ms']:11.2f}{non2xx:9d}"
            )

        if "update" in results and "new" in results:
            print(f"\nupdate path (status changes) vs insert path (new): {ratio('update', 'new')}")
        stored = count_originals(f"{prefix}involve_asia_db")
        verdict = "OK" if stored == successes else "MISMATCH"
        print(f"\nstored originals {stored} == 200 success responses {successes}: {verdict}")
        valid_failures = sum(
            r["non2xx"] + r["socket_errors"] for load in loads if load != "invalid" for r in results[load]
        )
        print(f"non-2xx or socket errors on valid load: {valid_failures}")
        if stored != successes or valid_failures:
            sys.exit(1)
    finally:
        stop(server)
        stop(bare)
        drop_databases(prefix)
        if args.keep_log:
            print(f"server logs: {log_path} {bare_log_path}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
