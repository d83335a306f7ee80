"""The admin's all-partners pages over 1,000 partners that are schemas of one shared database.

    .venv/bin/python bench/admin_scale_bench.py                        # 1,000 partners, 5 runs a page
    .venv/bin/python bench/admin_scale_bench.py --partners 200 --rows 50 --runs 3

Creates a configuration database and one shared partner database (unique names), the
partners as schemas of it (PARTNER_DATABASE_URL without `{name}`; partners.services
partner_create + partner_provision, timed), `--rows` conversions in each (over 30 days,
some today, a few duplicates and invalid postbacks), VACUUM ANALYZE. Then, logged in as a
superuser with Django's test client (every middleware, the admin, the templates), it
times the partner list (first and last page), the dashboard of all partners (30 days) and
the search for a conversion_id and for a click_id: the first request and the median, min
and max of `--runs` more, with the statements each request sent to partner storage.
Then the same pages with every partner read one by one (how partners outside a shared
database are read, and how every partner was read before) for comparison, the
overview for several chunk sizes, and the locks a statement over one chunk holds. Prints
the CPU model and the load average. Drops its databases and the partners' roles at the
end, whatever happened.
"""

import argparse
import os
import statistics
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import psycopg
from psycopg import sql

PROJECT_DIR = Path(__file__).resolve().parents[1]
SERVER = "postgres://root@127.0.0.1:5432"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--partners", type=int, default=1000)
    parser.add_argument("--rows", type=int, default=100, help="conversions per partner")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--chunks", default="25,50,100,200", help="UNION_CHUNK values to time the overview with")
    parser.add_argument("--together-only", action="store_true", help="skip the one-by-one and chunk-size comparisons")
    parser.add_argument("--server", default=SERVER, help="PostgreSQL server URL without a database name")
    args = parser.parse_args()

    prefix = f"admin_scale_{uuid.uuid4().hex[:6]}_"
    os.environ["DATABASE_URL"] = f"{args.server}/{prefix}default"
    os.environ["PARTNER_DATABASE_URL"] = f"{args.server}/{prefix}shared"  # no {name}: a schema each
    os.environ["PARTNER_DATABASE_TEMPLATE"] = f"{prefix}template"
    os.environ["ALLOWED_HOSTS"] = "testserver"
    os.environ.setdefault("SECRET_KEY", "admin-scale-bench-" + "x" * 40)
    os.environ["LOG_LEVEL"] = "WARNING"
    os.environ["DJANGO_SETTINGS_MODULE"] = "postback_site.settings"
    sys.path.insert(0, str(PROJECT_DIR))
    import django

    django.setup()
    try:
        run(args, shared_name=f"{prefix}shared")
    finally:
        drop(args.server, prefix)


def run(args: argparse.Namespace, *, shared_name: str) -> None:
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from django.test import Client

    from bench.postback_bench import cpu_model
    from conversions import cross_partner
    from infra.databases import database_create_if_missing, shared_database_alias
    from partners.models import Partner
    from partners.services import partner_create, partner_provision

    print(f"cpu: {cpu_model()}, {os.cpu_count()} cores; load average before: {load()}")
    database_create_if_missing("default")
    call_command("migrate", verbosity=0)

    started = time.perf_counter()
    for index in range(args.partners):
        code = f"p{index:04d}"
        partner = partner_create(
            partner_code=code,
            partner_name=f"Partner {index:04d}",
            endpoint_path=f"/{code}/event",
            database_name=f"{code}_db",
            parameter_mapping={},
        )
        partner_provision(partner=partner)
    seconds = time.perf_counter() - started
    each = seconds / args.partners * 1000
    print(f"provisioned {args.partners:,} partners as schemas in {seconds:.1f}s ({each:.0f} ms each)")

    partners = list(Partner.objects.order_by("partner_code"))
    started = time.perf_counter()
    seed(args.server, shared_name, partners, rows=args.rows)
    seconds = time.perf_counter() - started
    print(f"seeded {args.rows * args.partners:,} conversions and ran VACUUM ANALYZE in {seconds:.1f}s")

    client = Client()
    client.force_login(User.objects.create_superuser("bench", password=None))
    middle = partners[len(partners) // 2]
    pages = {
        "partner list, page 1": "/admin/partners/partner/",
        "partner list, last page": f"/admin/partners/partner/?p={(len(partners) - 1) // 100}",
        "dashboard of all partners, 30 days": "/admin/partners/partner/dashboard/",
        "search: a conversion_id": f"/admin/partners/partner/search/?q={middle.partner_code}-c7",
        "search: a click_id": f"/admin/partners/partner/search/?q=click-{middle.partner_code}-7",
    }
    aliases = [partner.database_alias for partner in partners]
    shared = shared_database_alias(aliases[0])

    print("\nread together: one statement per shared database (per chunk of partners)")
    time_pages(client, pages, runs=args.runs, aliases=[shared, *aliases])

    if args.together_only:
        overview_parts(partners, runs=args.runs)
        return
    print("\nread one by one (every partner in turn, as before)")
    original_key = cross_partner.shared_database_key
    cross_partner.shared_database_key = lambda alias: None
    try:
        time_pages(client, pages, runs=args.runs, aliases=[shared, *aliases])
    finally:
        cross_partner.shared_database_key = original_key

    print(f"\nthe dashboard of all partners by UNION_CHUNK ({args.runs} runs each)")
    original_chunk = cross_partner.UNION_CHUNK
    try:
        for chunk in [int(value) for value in args.chunks.split(",") if value]:
            cross_partner.UNION_CHUNK = chunk
            timings = [timed(client, pages["dashboard of all partners, 30 days"]) for _ in range(args.runs + 1)][1:]
            print(f"  {chunk:4d} partners a statement: median {statistics.median(timings) * 1000:6.0f} ms")
    finally:
        cross_partner.UNION_CHUNK = original_chunk
    overview_parts(partners, runs=args.runs)
    locks_held(args.server, shared_name, partners[: cross_partner.UNION_CHUNK])
    print(f"load average after: {load()}")


def seed(server: str, database: str, partners: list, *, rows: int) -> None:
    """`rows` conversions per partner over the last 30 days (every 10th today), with a
    duplicate and an invalid postback per 20 rows, straight into each partner's schema."""
    insert = sql.SQL(
        """
        INSERT INTO {table} (partner_id, conversion_id, offer_id, offer_name, conversion_datetime,
            usd_sale_amount, usd_earning, sub_id, click_id, status, currency, is_processed, is_duplicate,
            processing_error, raw_data, request_headers, request_digests, received_at, created_at, updated_at)
        SELECT {pk},
            CASE WHEN n % 20 = 0 THEN '' ELSE {code} || '-c' || (CASE WHEN n % 20 = 10 THEN n - 1 ELSE n END) END,
            (n % 7)::text, 'Offer ' || (n % 7), at - interval '1 hour',
            (n % 50) + 0.99, ((n % 50) + 0.99) * 0.08, 'sub-' || (n % 13), 'click-' || {code} || '-' || n,
            (ARRAY['pending', 'approved', 'rejected', 'paid'])[1 + n % 4], 'USD',
            n % 20 NOT IN (0, 10), n % 20 = 10, CASE WHEN n % 20 = 0 THEN 'usd_sale_amount: bad' END,
            '{{}}', '{{}}', '[]', at, at, at
        FROM generate_series(1, {rows}) AS n,
            LATERAL (SELECT CASE WHEN n % 10 = 0 THEN now() - interval '1 minute'
                                 ELSE now() - (n % 30) * interval '1 day' - interval '2 hours' END AS at) AS t
        """
    )
    url = f"{server.replace('postgres://', 'postgresql://', 1)}/{database}"
    with psycopg.connect(url, autocommit=True) as conn:
        with conn.transaction():
            for partner in partners:
                table = sql.Identifier(partner.database_name, "partner_conversions")
                literal = sql.Literal(partner.partner_code)
                conn.execute(insert.format(table=table, pk=sql.Literal(partner.pk), code=literal, rows=rows))
        conn.execute("VACUUM ANALYZE")


@contextmanager
def statements_to(aliases: list[str]) -> Iterator[list[str]]:
    """The statements sent to these aliases (partner storage) inside the block."""
    from django.db import connections

    seen: list[str] = []

    def record(execute, statement, params, many, context):
        seen.append(statement)
        return execute(statement, params, many, context)

    with ExitStack() as stack:
        for alias in aliases:
            stack.enter_context(connections[alias].execute_wrapper(record))
        yield seen


def timed(client, url: str) -> float:
    started = time.perf_counter()
    response = client.get(url)
    elapsed = time.perf_counter() - started
    assert response.status_code == 200, (url, response.status_code)
    assert b"unavailable" not in response.content, f"{url}: a partner's storage could not be read"
    return elapsed


def time_pages(client, pages: dict[str, str], *, runs: int, aliases: list[str]) -> None:
    print(f"  {'page':38} {'first':>8} {'median':>8} {'min':>8} {'max':>8}  statements to partner storage")
    for label, url in pages.items():
        with statements_to(aliases) as seen:
            first = timed(client, url)
        count = len(seen)
        timings = [timed(client, url) for _ in range(runs)]
        print(
            f"  {label:38} {first * 1000:6.0f}ms {statistics.median(timings) * 1000:6.0f}ms "
            f"{min(timings) * 1000:6.0f}ms {max(timings) * 1000:6.0f}ms  {count}"
        )


def overview_parts(partners: list, *, runs: int) -> None:
    """Where the dashboard of all partners spends its time: its statements and sums
    (partners_stats), the charts and tables made of them (the first 10 partners and `others`;
    a row per partner) and its template."""
    from django.contrib import admin
    from django.contrib.auth.models import User
    from django.contrib.messages.storage.fallback import FallbackStorage
    from django.test import RequestFactory

    from conversions.admin.dashboards import PartnerDashboards
    from conversions.cross_partner import partners_stats
    from conversions.dashboard import dashboard_overview_charts, dashboard_overview_tables
    from conversions.forms import OverviewForm
    from partners.models import Partner

    form = OverviewForm({})
    form.is_valid()
    time_range = form.time_range()
    request = RequestFactory().get("/admin/partners/partner/dashboard/")
    request.user = User.objects.get(username="bench")
    request.session = {}
    request._messages = FallbackStorage(request)
    response = PartnerDashboards(admin.site.get_model_admin(Partner)).overview_view(request)
    template = response.resolve_template(response.template_name)
    context = response.context_data
    results = context["results"]
    parts = {
        "partners_stats (statements and sums)": lambda: partners_stats(partners=partners, time_range=time_range, top=0),
        "charts and tables (top 10 + others)": lambda: (
            dashboard_overview_charts(results=results, top=10, sort="approved"),
            dashboard_overview_tables(results=results, sort="approved", dashboard_url=lambda partner: "/"),
        ),
        "the template": lambda: template.render(context, request),
    }
    print("\nthe dashboard of all partners, in parts")
    for label, work in parts.items():
        work()
        timings = []
        for _ in range(runs):
            started = time.perf_counter()
            work()
            timings.append(time.perf_counter() - started)
        print(f"  {label:42} median {statistics.median(timings) * 1000:6.0f} ms")


def locks_held(server: str, database: str, partners: list) -> None:
    """How many locks one statement over `partners` takes (PostgreSQL keeps them to its end)."""
    branches = [
        sql.SQL("SELECT {}, count(*) FROM {} WHERE received_at >= now() - interval '1 day'").format(
            sql.Literal(partner.pk), sql.Identifier(partner.database_name, "partner_conversions")
        )
        for partner in partners
    ]
    url = f"{server.replace('postgres://', 'postgresql://', 1)}/{database}"
    with psycopg.connect(url) as conn:
        conn.execute(sql.SQL(" UNION ALL ").join(branches)).fetchall()
        held = conn.execute("SELECT count(*) FROM pg_locks WHERE pid = pg_backend_pid()").fetchone()[0]
        limit = conn.execute(
            "SELECT current_setting('max_locks_per_transaction')::int * "
            "(current_setting('max_connections')::int + current_setting('max_prepared_transactions')::int)"
        ).fetchone()[0]
        conn.rollback()
    print(f"\nlocks held by one statement over {len(partners)} partners: {held:,} (the server's lock table: {limit:,})")


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def drop(server: str, prefix: str) -> None:
    """Drop every database named `prefix...` and the partners' roles (`schema@prefix...`)."""
    from django.db import connections

    from infra.databases import connection_broker

    connections.close_all()
    connection_broker.close_idle()
    url = f"{server.replace('postgres://', 'postgresql://', 1)}/postgres"
    with psycopg.connect(url, autocommit=True) as conn:
        names = [
            row[0] for row in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", [f"{prefix}%"])
        ]
        for name in names:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        roles = [row[0] for row in conn.execute("SELECT rolname FROM pg_roles WHERE rolname LIKE %s", [f"%@{prefix}%"])]
        for role in roles:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
    print(f"\ndropped {len(names)} database(s) and {len(roles)} role(s) named {prefix}...")


if __name__ == "__main__":
    main()
