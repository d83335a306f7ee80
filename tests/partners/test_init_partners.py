"""`manage.py init_partners` on PostgreSQL: creates the partner databases itself, twice is a no-op."""

import io
import subprocess
import sys

import psycopg
import pytest
from django.core.management import CommandError, call_command
from django.db import connections

from conversions.models import PartnerConversion
from infra.databases import partner_database_unregister
from partners.models import Partner
from tests.conftest import POSTGRES_SERVER
from tests.e2e.server import PROJECT_DIR, service_env


@pytest.fixture
def postgres_template(live_db, database_pool, settings):
    settings.PARTNER_DATABASE_URL = database_pool.template("postgres")
    yield settings.PARTNER_DATABASE_URL
    for alias in ("involve_asia_db", "rector_db"):
        partner_database_unregister(alias)


def run_init() -> str:
    out = io.StringIO()
    call_command("init_partners", stdout=out)
    return out.getvalue()


def databases_on_server(prefix: str) -> set[str]:
    with psycopg.connect(**POSTGRES_SERVER) as conn:
        rows = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", [prefix + "%"]).fetchall()
    return {name for (name,) in rows}


def test_first_run_creates_partners_and_their_databases(postgres_template):
    output = run_init()

    assert "partner involve_asia (/involve/event): created" in output
    assert "partner rector (/rector/event): created" in output
    # copied from the server's template of the current schema, made once by migrating it
    assert "database involve_asia_db" in output and "created from template test_pb_" in output
    assert "provisioned 2 partner database(s) in" in output
    prefix = postgres_template.split("/")[-1].replace("{name}", "")
    assert databases_on_server(prefix) == {prefix + "involve_asia_db", prefix + "rector_db"}
    with connections["involve_asia_db"].cursor() as cursor:
        cursor.execute("SELECT name FROM django_migrations WHERE app = 'conversions' ORDER BY id")
        assert cursor.fetchone() == ("0001_initial",)
    involve = Partner.objects.get(partner_code="involve_asia")
    assert involve.parameter_mapping["usd_earning"] == "usd_payout"
    assert involve.parameter_mapping["conversion_datetime"] == "datetime_conversion"
    assert PartnerConversion.objects.using("involve_asia_db").count() == 0


def test_second_run_changes_nothing(postgres_template):
    run_init()
    before = list(Partner.objects.order_by("pk").values())

    output = run_init()

    assert "exists, left unchanged" in output
    assert "exists; schema up to date" in output
    assert list(Partner.objects.order_by("pk").values()) == before


def test_an_edited_seed_partner_is_never_overwritten(postgres_template):
    run_init()
    Partner.objects.filter(partner_code="rector").update(
        partner_name="Rector (edited)", parameter_mapping={"sub_id": "rs"}
    )
    run_init()
    rector = Partner.objects.get(partner_code="rector")
    assert (rector.partner_name, rector.parameter_mapping) == ("Rector (edited)", {"sub_id": "rs"})


def test_unreachable_partner_database_fails_the_command_with_the_reason(postgres_template, settings):
    run_init()
    Partner.objects.create(
        partner_code="broken",
        partner_name="Broken",
        endpoint_path="/broken/event",
        database_name="broken_db",
        database_url="postgres://root@127.0.0.1:1/broken",
    )
    err = io.StringIO()
    with pytest.raises(CommandError, match="could not provision: broken"):
        call_command("init_partners", stdout=io.StringIO(), stderr=err)
    assert "database broken_db: FAILED: cannot reach PostgreSQL at 127.0.0.1:1" in err.getvalue()
    partner_database_unregister("broken_db")
    connections.close_all()


def test_concurrent_first_runs_take_turns_on_a_fresh_database(database_pool):
    # Several instances or job retries may run the first-boot step at once on an empty database.
    prefix = f"test_pb_{database_pool.token}_turns_"
    env = service_env(
        DATABASE_URL=f"postgres://root@127.0.0.1:5432/{prefix}default",
        PARTNER_DATABASE_URL=f"postgres://root@127.0.0.1:5432/{prefix}{{name}}",
    )
    runs = [
        subprocess.Popen(
            [sys.executable, "manage.py", "init_partners"],
            cwd=PROJECT_DIR,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(3)
    ]
    outputs = [run.communicate(timeout=300)[0] for run in runs]

    assert [run.returncode for run in runs] == [0, 0, 0], "\n----\n".join(outputs)
    assert sum("partner involve_asia (/involve/event): created" in output for output in outputs) == 1
    assert sum("partner involve_asia (/involve/event): exists, left unchanged" in output for output in outputs) == 2
    with psycopg.connect(**{**POSTGRES_SERVER, "dbname": f"{prefix}default"}) as conn:
        assert conn.execute("SELECT partner_code FROM partners ORDER BY 1").fetchall() == [
            ("involve_asia",),
            ("rector",),
        ]
    assert databases_on_server(prefix) == {f"{prefix}default", f"{prefix}involve_asia_db", f"{prefix}rector_db"}
