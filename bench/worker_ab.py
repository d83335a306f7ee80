"""The ingest benchmark with our gunicorn worker against gunicorn's stock gthread.

    .venv/bin/python bench/worker_ab.py                       # 2 pairs, --rounds 2 --duration 8 --loads minimal,new
    .venv/bin/python bench/worker_ab.py --pairs 3 --duration 10
    .venv/bin/python bench/worker_ab.py --side-by-side --rounds 4

Interleaved (the default): runs bench/postback_bench.py alternately with
postback_site/gunicorn.conf.py as it is (`PostbackWorker`) and with
`GUNICORN_CMD_ARGS=--worker-class gthread` (gunicorn's own worker, everything else
equal), in the order A B B A A B ... so that a drift in the machine's load weighs on
both, and prints, per worker and load, the medians of every round: requests/s, p99, the
ratio to the minimal view of the same round, and the CPU each request cost in gunicorn
and in PostgreSQL (read from /proc: steadier than requests/s on a shared machine).

Side by side (`--side-by-side`): one server of each worker, each with its own databases,
loaded by its own wrk at the same time, so that whatever else runs on the machine weighs
on both equally; each gets about half the machine, so compare their CPU per request (and
each other's req/s), not the req/s of an interleaved run.
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parents[1]
WORKERS = {"postback": None, "gthread": "--worker-class gthread"}
ROUND = re.compile(
    r"round (?P<round>\d+) (?P<load>\w+)\s+(?P<rps>[\d.]+) req/s\s+p50\s+(?P<p50>[\d.]+) ms\s+"
    r"p90\s+(?P<p90>[\d.]+) ms\s+"
    r"p99\s+(?P<p99>[\d.]+) ms\s+cpu/request app (?P<app>[\d.]+) ms db (?P<db>[\d.]+) ms.*non-2xx (?P<non2xx>\d+)"
    r"\s+socket errors (?P<errors>\d+)"
)


def bench_run(worker: str, args: argparse.Namespace) -> list[dict]:
    """One postback_bench.py run with `worker`; its rounds, parsed."""
    env = {key: value for key, value in os.environ.items() if key != "GUNICORN_CMD_ARGS"}
    if WORKERS[worker]:
        env["GUNICORN_CMD_ARGS"] = WORKERS[worker]
    command = [
        sys.executable,
        "bench/postback_bench.py",
        "--rounds",
        str(args.rounds),
        "--duration",
        str(args.duration),
        "--loads",
        args.loads,
    ]
    output = subprocess.run(command, cwd=PROJECT_DIR, env=env, capture_output=True, text=True)
    if output.returncode != 0:
        sys.exit(f"postback_bench.py failed with {worker}:\n{output.stdout}\n{output.stderr}")
    rounds = [match.groupdict() for match in ROUND.finditer(output.stdout)]
    for line in output.stdout.splitlines():
        if line.startswith("  round"):
            print(f"  [{worker}] {line.strip()}", flush=True)
    return rounds


def side_by_side(args: argparse.Namespace) -> None:
    """Both workers' servers at once, each loaded by its own wrk; print every round and the medians."""
    sys.path.insert(0, str(PROJECT_DIR / "bench"))
    import postback_bench as bench

    wrk = bench.ensure_wrk()
    workdir = Path(tempfile.mkdtemp(prefix="worker-ab-"))
    servers: dict[str, dict] = {}
    try:
        for worker, cmd_args in WORKERS.items():
            prefix = f"bench_pb_{uuid.uuid4().hex[:8]}_"
            env = {
                key: value
                for key, value in os.environ.items()
                if key not in ("DJANGO_SETTINGS_MODULE", "GUNICORN_CMD_ARGS")
            }
            env.update(
                DATABASE_URL=f"postgres://root@127.0.0.1:5432/{prefix}default",
                PARTNER_DATABASE_URL=f"postgres://root@127.0.0.1:5432/{prefix}{{name}}",
                SECRET_KEY="bench-" + "k" * 50,
                BENCH_MINIMAL_VIEW="1",
                HOST="127.0.0.1",
                PORT=str(bench.free_port()),
                PYTHONUNBUFFERED="1",
            )
            if cmd_args:
                env["GUNICORN_CMD_ARGS"] = cmd_args
            servers[worker] = {"prefix": prefix, "base": f"http://127.0.0.1:{env['PORT']}", "dir": workdir / worker}
            servers[worker]["dir"].mkdir()
            manage = [sys.executable, "manage.py"]
            subprocess.run([*manage, "init_partners"], cwd=PROJECT_DIR, env=env, check=True, capture_output=True)
            quota = "from partners.models import Partner; Partner.objects.update(max_daily_requests=2_000_000_000)"
            subprocess.run([*manage, "shell", "-c", quota], cwd=PROJECT_DIR, env=env, check=True, capture_output=True)
            with open(workdir / f"{worker}.log", "w") as log:
                servers[worker]["process"] = subprocess.Popen(
                    [sys.executable, "-m", "gunicorn", "-c", "postback_site/gunicorn.conf.py"],
                    cwd=PROJECT_DIR,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
        rounds = ["warm"] + [f"r{number}" for number in range(args.rounds)]
        for server in servers.values():
            deadline = time.monotonic() + 30
            while True:
                try:
                    urllib.request.urlopen(server["base"] + "/health", timeout=2).read()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        sys.exit(f"a server did not start; logs in {workdir}")
                    time.sleep(0.2)
            for round_id in rounds:  # the ids the last 300 ms of each load repeat
                for index in range(100):
                    url = (
                        f"{server['base']}/partner/involve/event?conversion_id={round_id}dup-{index}{bench.QUERY_TAIL}"
                    )
                    urllib.request.urlopen(url, timeout=10).read()

        def load_both(mode: str, round_id: str, duration: int) -> dict[str, dict]:
            results: dict[str, dict] = {}

            def run(worker: str) -> None:
                server = servers[worker]
                options = argparse.Namespace(
                    wrk_threads=1,
                    connections=args.connections,
                    duration=duration,
                    server_pid=server["process"].pid,
                    database_prefix=server["prefix"],
                )
                results[worker] = bench.run_wrk(wrk, server["base"], mode, round_id, options, server["dir"])

            threads = [threading.Thread(target=run, args=(worker,)) for worker in servers]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            return results

        load_both("minimal", "warm", 2)
        load_both("new", "warm", 2)
        loads = args.loads.split(",")
        results: dict[str, dict[str, list[dict]]] = {worker: {load: [] for load in loads} for worker in servers}
        for number in range(args.rounds):
            for load in loads:
                for worker, result in load_both(load, f"r{number}", args.duration).items():
                    results[worker][load].append(result)
                    print(
                        f"  round {number + 1} {worker:<9}{load:<9}{result['rps']:7.0f} req/s  "
                        f"p99 {result['p99_us'] / 1000:7.2f} ms  app cpu {result['app_cpu_ms']:.3f} ms  "
                        f"db cpu {result['db_cpu_ms']:.3f} ms  non-2xx {result['non2xx']}  "
                        f"socket errors {result['socket_errors']}",
                        flush=True,
                    )
        print(f"\nside by side, {args.connections} connections each, medians of {args.rounds} rounds:")
        print(f"  {'worker':<10}{'load':<10}{'req/s':>8}{'p99 ms':>9}{'app cpu ms':>12}{'db cpu ms':>11}")
        for worker, by_load in results.items():
            for load, runs in by_load.items():
                print(
                    f"  {worker:<10}{load:<10}{statistics.median(r['rps'] for r in runs):8.0f}"
                    f"{statistics.median(r['p99_us'] for r in runs) / 1000:9.2f}"
                    f"{statistics.median(r['app_cpu_ms'] for r in runs):12.3f}"
                    f"{statistics.median(r['db_cpu_ms'] for r in runs):11.3f}"
                )
    finally:
        for server in servers.values():
            process = server.get("process")
            if process is not None:
                process.terminate()
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
            bench.drop_databases(server["prefix"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=2, help="runs of each worker")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per run (postback_bench.py --rounds)")
    parser.add_argument("--duration", type=int, default=8, help="seconds per load")
    parser.add_argument("--loads", default="minimal,new")
    parser.add_argument("--side-by-side", action="store_true", help="both servers at once (see above)")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections per server (side by side)")
    args = parser.parse_args()
    if args.side_by_side:
        side_by_side(args)
        return

    results: dict[str, list[dict]] = {worker: [] for worker in WORKERS}
    order = []
    for pair in range(args.pairs):
        order += ["postback", "gthread"] if pair % 2 == 0 else ["gthread", "postback"]
    for worker in order:
        results[worker] += bench_run(worker, args)

    loads = args.loads.split(",")
    rounds = args.pairs * args.rounds
    print(f"\nmedians of {rounds} rounds per worker, {args.duration} s per load, order {' '.join(order)}")
    print(f"  {'worker':<10}{'load':<10}{'req/s':>8}{'p99 ms':>9}{'vs minimal':>12}{'app cpu ms':>12}{'db cpu ms':>11}")
    for worker, rounds in results.items():
        by_round: dict[tuple, dict] = {}
        for index, entry in enumerate(rounds):
            by_round[(index // len(loads), entry["load"])] = entry
        for load in loads:
            entries = [entry for (_, name), entry in by_round.items() if name == load]
            ratios = [
                float(entry["rps"]) / float(by_round[(run, "minimal")]["rps"])
                for (run, name), entry in by_round.items()
                if name == load and (run, "minimal") in by_round
            ]
            ratio = f"{statistics.median(ratios) * 100:11.0f}%" if ratios and load != "minimal" else f"{'':>12}"
            failures = sum(int(entry["non2xx"]) + int(entry["errors"]) for entry in entries)
            print(
                f"  {worker:<10}{load:<10}{statistics.median(float(e['rps']) for e in entries):8.0f}"
                f"{statistics.median(float(e['p99']) for e in entries):9.2f}{ratio}"
                f"{statistics.median(float(e['app']) for e in entries):12.2f}"
                f"{statistics.median(float(e['db']) for e in entries):11.2f}"
                + (f"  non-2xx/socket errors {failures}" if failures else "")
            )


if __name__ == "__main__":
    main()
