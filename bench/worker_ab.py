"""The ingest benchmark with our gunicorn worker against gunicorn's stock gthread, interleaved.

    .venv/bin/python bench/worker_ab.py                       # 2 pairs, --rounds 2 --duration 8 --loads minimal,new
    .venv/bin/python bench/worker_ab.py --pairs 3 --duration 10

Runs bench/postback_bench.py alternately with postback_site/gunicorn.conf.py as it is
(`PostbackWorker`) and with `GUNICORN_CMD_ARGS=--worker-class gthread` (gunicorn's own
worker, everything else equal), in the order A B B A A B ... so that a drift in the
machine's load weighs on both, and prints, per worker and load, the medians of every
round: requests/s, p99, the ratio to the minimal view of the same round, and the CPU each
request cost in gunicorn and in PostgreSQL (read from /proc: steadier than requests/s on
a shared machine).
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=2, help="runs of each worker")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per run (postback_bench.py --rounds)")
    parser.add_argument("--duration", type=int, default=8, help="seconds per load")
    parser.add_argument("--loads", default="minimal,new")
    args = parser.parse_args()

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
