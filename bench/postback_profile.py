"""Where the application CPU of one postback goes, by stage.

    .venv/bin/python bench/postback_profile.py                 # 3,000 new postbacks, step logs on
    .venv/bin/python bench/postback_profile.py --requests 5000 --load duplicate --no-step-logs

Runs the real WSGI application (postback_site.wsgi: every middleware, the view, the
pipeline) in process, as gunicorn calls it, against its own PostgreSQL databases
(dropped afterwards), under cProfile. Each function's own time is charged to the stage
its code belongs to (request parsing, middleware, routing, partner lookup, guards,
mapping and coercion, JSON, the statements and the database driver, metrics, logging,
the response), and the table shows the milliseconds per postback and the share of each.
The profiler slows everything by about the same factor, so the shares are what to read;
the unprofiled CPU per postback is printed too, with the minimal view's (the benchmark's
floor, bench/minimal_view.py) measured in alternation in the same process, and their
ratio: a figure that other load on the machine moves far less than requests/s. A postback's database time on the
server is not in it (see bench/postback_bench.py's db cpu column).
"""

import argparse
import cProfile
import io
import os
import pstats
import statistics
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parents[1]
QUERY = (
    "conversion_id={id}&offer_id=1021&offer_name=Shopee&datetime_conversion=2025-01-15%2013:45:10"
    "&usd_sale_amount=93.47&usd_payout=4.67&aff_sub=sub123&aff_sub2=media456&aff_sub3=click789"
    "&conversion_currency=MYR"
)

# (stage, what a function's file path or name contains), first match wins.
STAGES = (
    (
        "logging",
        (
            "/logging/",
            "infra/observability.py",
            "infra/masking.py",
            "conversions/ingest/steps.py",
            "method 'write'",
            "posix.write",
        ),
    ),
    ("metrics", ("prometheus_client", "infra/metrics.py", "mmap")),
    (
        "statements and database driver",
        ("conversions/ingest/statements.py", "psycopg", "django/db/", "infra/databases/"),
    ),
    (
        "guards (limits, access, quota)",
        ("conversions/ingest/guards.py", "access.py", "limits.py", "quota.py", "ipaddress"),
    ),
    ("mapping and coercion", ("partners/mapping.py", "decimal", "_strptime", "datetime", "zoneinfo", "lifecycle.py")),
    ("JSON (raw data, headers, answer)", ("json", "storable_json")),
    (
        "decide and store",
        ("conversions/ingest/store.py", "conversions/ingest/decide.py", "conversions/ingest/hooks.py"),
    ),
    ("partner lookup", ("partners/selectors.py", "partners/models.py")),
    (
        "request parsing",
        (
            "django/core/handlers/wsgi.py",
            "django/http/request.py",
            "conversions/ingest/parse.py",
            "urllib/parse.py",
            "django/utils/datastructures.py",
            "request_meta.py",
            "http/multipartparser",
        ),
    ),
    ("middleware", ("django/middleware/", "/contrib/", "whitenoise", "django/utils/deprecation.py")),
    ("routing and dispatch", ("django/urls/", "django/core/handlers/", "django/views/", "rest_framework/", "wsgi.py")),
    (
        "response",
        ("django/http/response.py", "conversions/ingest/respond.py", "django/http/cookie", "django/core/signals"),
    ),
    ("the pipeline itself", ("conversions/ingest/pipeline.py", "conversions/views.py")),
)


def stage_of(location: str) -> str:
    for stage, needles in STAGES:
        if any(needle in location for needle in needles):
            return stage
    return "other (Python builtins, dispatch of signals, ...)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--load", choices=("new", "duplicate", "invalid", "minimal"), default="new")
    parser.add_argument("--no-step-logs", action="store_true")
    parser.add_argument("--top", type=int, default=25, help="also print the top N functions by own time")
    parser.add_argument("--save", metavar="FILE", help="also write the profile there (python -m pstats FILE)")
    args = parser.parse_args()

    token = uuid.uuid4().hex[:8]
    prefix = f"bench_prof_{token}_"
    os.environ.update(
        DJANGO_SETTINGS_MODULE="postback_site.settings",
        DATABASE_URL=f"postgres://root@127.0.0.1:5432/{prefix}default",
        PARTNER_DATABASE_URL=f"postgres://root@127.0.0.1:5432/{prefix}{{name}}",
        PARTNER_DATABASE_TEMPLATE=f"{prefix}template",
        SECRET_KEY="bench-" + "k" * 50,
        BENCH_MINIMAL_VIEW="1",
        LOG_FILE="",
        PROMETHEUS_MULTIPROC_DIR=tempfile.mkdtemp(prefix="bench-prom-"),
    )
    sys.path.insert(0, str(PROJECT_DIR))
    import django

    django.setup()
    # stderr of the step logs goes nowhere, as a server's would go to its log collector
    import logging

    from django.core.management import call_command

    from bench.postback_bench import cpu_model, drop_databases
    from partners.models import Partner
    from postback_site.wsgi import application

    null = open(os.devnull, "w")  # noqa: SIM115 (kept open for the run)
    stderr = os.dup(2)  # given back at the end, so that a failure is still said
    os.dup2(null.fileno(), 2)
    try:
        call_command("init_partners", stdout=io.StringIO())
        Partner.objects.update(max_daily_requests=0, enable_logging=not args.no_step_logs)
        logging.getLogger("django.request").setLevel(logging.ERROR)

        def postback(number: int, load: str = args.load) -> None:
            path = "/partner/involve/event"
            if load == "minimal":
                path, query = "/bench/insert", f"conversion_id=m{number}"
            elif load == "new":
                query = QUERY.format(id=f"p{number}")
            elif load == "duplicate":
                query = QUERY.format(id=f"d{number % 50}")
            else:
                query = QUERY.format(id=f"i{number}") + "&usd_sale_amount=lots"
            environ = {
                "REQUEST_METHOD": "GET",
                "PATH_INFO": path,
                "QUERY_STRING": query,
                "SERVER_NAME": "localhost",
                "SERVER_PORT": "8000",
                "HTTP_HOST": "localhost",
                "REMOTE_ADDR": "127.0.0.1",
                "SERVER_PROTOCOL": "HTTP/1.1",
                "wsgi.url_scheme": "http",
                "wsgi.input": io.BytesIO(),
                "wsgi.errors": sys.stderr,
            }
            statuses = []
            response = application(environ, lambda status, headers: statuses.append(status))
            b"".join(response)
            response.close()
            if not statuses[0].startswith(("200", "400")):
                raise SystemExit(f"postback answered {statuses[0]}")

        for number in range(500):
            postback(1_000_000 + number)  # warm: connections, caches, prepared statements
            postback(1_500_000 + number, "minimal")  # (ids apart from `--load minimal`'s)

        def unprofiled_ms(load: str, first: int) -> tuple[float, float]:
            """CPU and wall milliseconds per request of `load`, without the profiler."""
            started, cpu_started = time.perf_counter(), time.process_time()
            for number in range(args.requests):
                postback(first + number, load)
            return (
                (time.process_time() - cpu_started) * 1000 / args.requests,
                (time.perf_counter() - started) * 1000 / args.requests,
            )

        # The load and the minimal view (bench/minimal_view.py) alternate, three times
        # each: the medians, and their ratio, are what compares across changes.
        plain, floor = [], []
        for turn in range(3):
            plain.append(unprofiled_ms(args.load, 2_000_000 + turn * args.requests))
            floor.append(unprofiled_ms("minimal", 5_000_000 + turn * args.requests))  # apart from `--load minimal`
        plain_ms, wall_ms = statistics.median(ms for ms, _ in plain), statistics.median(ms for _, ms in plain)
        floor_ms = statistics.median(ms for ms, _ in floor)
        profile = cProfile.Profile(time.process_time)  # CPU, not the wait for the database
        profile.enable()
        for number in range(args.requests):
            postback(8_000_000 + number)
        profile.disable()
    finally:
        os.dup2(stderr, 2)
        from django.db import connections

        from infra.databases import connection_broker

        connections.close_all()
        connection_broker.close_idle()
        drop_databases(prefix)

    if args.save:
        profile.dump_stats(args.save)
    stats = pstats.Stats(profile)
    by_stage: dict[str, float] = defaultdict(float)
    rows = []
    for (filename, line, name), (_calls, _primitive, own, _cumulative, callers) in stats.stats.items():
        location = f"{filename}:{line}({name})"
        rows.append((own, location))
        if filename == "~" and callers:
            # A builtin (getattr, isinstance, a C method) is charged to the code calling it.
            for (caller_file, caller_line, caller_name), edge in callers.items():
                by_stage[stage_of(f"{caller_file}:{caller_line}({caller_name}) {name}")] += edge[2]
        else:
            by_stage[stage_of(location)] += own
    total = sum(by_stage.values())
    cpu = cpu_model()
    step_logs = "off" if args.no_step_logs else "on"
    print(
        f"postback profile: {cpu}, {args.requests} {args.load} postbacks, step logs {step_logs}; "
        f"unprofiled: {plain_ms:.3f} ms CPU ({wall_ms:.3f} ms wall) per postback"
    )
    print(f"  minimal view: {floor_ms:.3f} ms CPU per request; {args.load} / minimal = {plain_ms / floor_ms:.2f}x")
    print(
        f"  {'stage':<48}{'ms/postback':>12}{'share':>8}   (profiled: x{total * 1000 / args.requests / plain_ms:.1f})"
    )
    for stage, seconds in sorted(by_stage.items(), key=lambda item: -item[1]):
        print(f"  {stage:<48}{seconds * 1000 / args.requests:12.3f}{seconds / total * 100:7.1f}%")
    print(f"\n  top {args.top} functions by own time (ms per postback, profiled):")
    for own, location in sorted(rows, reverse=True)[: args.top]:
        print(f"  {own * 1000 / args.requests:8.3f}  {location.replace(str(PROJECT_DIR) + '/', '')[-110:]}")


if __name__ == "__main__":
    main()
