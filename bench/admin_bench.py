"""Time the conversions admin over a big partner database, through the real Django stack.

    python bench/admin_bench.py                 # 1,000,000 rows, 7 runs per page
    python bench/admin_bench.py --rows 200000 --runs 5

Creates two throwaway PostgreSQL databases (configuration + one partner), seeds the
partner's with bench/seed_conversions.py, logs in as a superuser with Django's test
client (every middleware, the admin, the templates) and prints the median time of each
page: the conversions list, its filters and searches, and the dashboards (the partner's,
for 30 days = about half the rows on conversion time (the default, with the previous 30
days' totals) and on received time, 7 days and 60 days, then with three publishers, and
the all-partners overview).
Prints the CPU model and the load average, since the figures move with them. Drops both
databases at the end.
"""

import argparse
import datetime
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parents[1]
SERVER = "postgres://root@127.0.0.1:5432"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--server", default=SERVER, help="PostgreSQL server URL without a database name")
    args = parser.parse_args()

    token = uuid.uuid4().hex[:6]
    default_name = f"admin_bench_{token}_default"
    partner_name = f"admin_bench_{token}_partner"
    os.environ["DATABASE_URL"] = f"{args.server}/{default_name}"
    os.environ["ALLOWED_HOSTS"] = "testserver"
    os.environ.setdefault("SECRET_KEY", "admin-bench-" + "x" * 40)
    os.environ["LOG_LEVEL"] = "WARNING"
    os.environ["DJANGO_SETTINGS_MODULE"] = "postback_site.settings"
    sys.path[:0] = [str(PROJECT_DIR), str(PROJECT_DIR / "bench")]
    import django

    django.setup()
    try:
        run(args, partner_url=f"{args.server}/{partner_name}")
    finally:
        drop(args.server, [default_name, partner_name])


def run(args: argparse.Namespace, *, partner_url: str) -> None:
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from django.test import Client
    from seed_conversions import seed

    from infra.databases import database_create_if_missing
    from partners.models import Partner

    database_create_if_missing("default")
    call_command("migrate", verbosity=0)
    partner = Partner.objects.create(
        partner_code="bench",
        partner_name="Bench",
        endpoint_path="/bench/event",
        database_name="bench_db",
        database_url=partner_url,
        parameter_mapping={"sub_id": "aff_sub"},
    )
    seconds = seed(database_url=partner_url, rows=args.rows, partner_id=partner.pk)
    print(f"seeded {args.rows:,} conversions in {seconds:.1f}s")

    client = Client()
    client.force_login(User.objects.create_superuser("bench", password=None))
    base = "/admin/conversions/partnerconversion/?partner=bench"
    middle = args.rows // 2
    pages = {
        "list (newest first)": base,
        "list, page 50": base + "&p=50",
        "filter: duplicates": base + "&is_duplicate__exact=1",
        "filter: has error": base + "&has_error=yes",
        "filter: offer 17 + status approved": base + "&offer_id=17&status=approved",
        "filter: converted this month": base + "&conversion_datetime__year={y}&conversion_datetime__month={m}",
        "search: conversion_id (exact)": base + f"&q=conv-{middle:09d}",
        "search: click_id prefix": base + f"&q=click-{middle:010d}",
        "search: sub_id prefix": base + "&q=sub-4999",
        "search: offer name, any case": base + "&q=offer 17",
        "search: conversion_id, any case": base + f"&q=CONV-{middle:09d}",
        "detail page": None,
        # seed sub_ids are `sub-<n>`: six characters make ~500 prefixes. The default is 30 days of
        # conversion time, with the previous 30 days' totals: every row of the 60 seeded days.
        "dashboard, 30 days (default)": "/admin/partners/partner/{pk}/dashboard/?prefix_length=6",
        "dashboard, 30 days, received time": "/admin/partners/partner/{pk}/dashboard/?prefix_length=6"
        "&time_field=received_at",
        "dashboard, 7 days": "/admin/partners/partner/{pk}/dashboard/?prefix_length=6&start={week}",
        "dashboard, 60 days (every row)": "/admin/partners/partner/{pk}/dashboard/?prefix_length=6&start={sixty}",
        "dashboard, 30 days, 3 publishers": "/admin/partners/partner/{pk}/dashboard/?prefix_length=6&publishers=on",
        "dashboard of all partners, 30 days": "/admin/partners/partner/dashboard/",
    }
    from conversions.models import PartnerConversion

    newest = PartnerConversion.objects.using("bench_db").order_by("-received_at", "-id").first()
    pages["detail page"] = f"/admin/conversions/partnerconversion/{newest.pk}/change/?partner=bench"
    when = newest.conversion_datetime
    pages["filter: converted this month"] = pages["filter: converted this month"].format(y=when.year, m=when.month)
    today = datetime.datetime.now(datetime.UTC).date()
    dates = {"week": today - datetime.timedelta(days=6), "sixty": today - datetime.timedelta(days=60)}
    for label, url in pages.items():
        if label.startswith("dashboard"):
            pages[label] = url.format(pk=partner.pk, **dates)
    from bench.postback_bench import cpu_model

    print(f"cpu: {cpu_model()}, {os.cpu_count()} cores; load average before: {load()}")

    print(f"\n{'page':40} {'median':>9} {'min':>9} {'max':>9}  rows shown")
    for label, url in pages.items():
        if label == "dashboard, 30 days, 3 publishers":
            publishers_add()
        timings = []
        response = client.get(url)  # warm: connection, caches, templates
        assert response.status_code == 200, (label, response.status_code)
        for _ in range(args.runs):
            started = time.perf_counter()
            response = client.get(url)
            timings.append(time.perf_counter() - started)
            assert response.status_code == 200, (label, response.status_code)
            # A partner database that timed out is a quick page saying so: not a figure to quote.
            assert b"cannot be read right now" not in response.content, (label, "database unavailable")
            assert b"database unavailable" not in response.content, (label, "database unavailable")
        shown = response.content.decode().count('<input type="checkbox" name="_selected_action"')
        if "dashboard" in label:
            shown = "-"
        print(
            f"{label:40} {statistics.median(timings) * 1000:7.0f}ms {min(timings) * 1000:7.0f}ms "
            f"{max(timings) * 1000:7.0f}ms  {shown if 'detail' not in label else '-'}"
        )
    print(f"load average after: {load()}")


def publishers_add() -> None:
    """Three publishers over the seed's sub_ids (`sub-<n>`): by prefix, by regular expression, with
    an offer override; the dashboard then adds its by-publisher table, payouts and margin."""
    from decimal import Decimal

    from publishers.models import Publisher, PublisherOfferPayout

    template = "https://pub.example/pb?click={click_id}"
    Publisher.objects.create(code="ones", name="Ones", match_prefixes="sub-1", url_template=template)
    regex = Publisher.objects.create(
        code="twos", name="Twos", match_regex="^sub-2[0-9]*$", url_template=template, payout_kind="percent_earning",
        payout_value=Decimal("40"),
    )  # fmt: skip
    PublisherOfferPayout.objects.create(publisher=regex, offer="17", payout_kind="fixed", payout_value=Decimal("0.5"))
    Publisher.objects.create(code="threes", name="Threes", match_prefixes="sub-3", url_template=template)


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def drop(server: str, names: list[str]) -> None:
    import psycopg
    from django.db import connections
    from psycopg import sql

    connections.close_all()
    with psycopg.connect(server.replace("postgres://", "postgresql://", 1) + "/postgres", autocommit=True) as conn:
        for name in names:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    print(f"\ndropped {', '.join(names)}")


if __name__ == "__main__":
    main()
