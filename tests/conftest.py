"""Shared fixtures: real partner databases on SQLite and PostgreSQL.

The configuration database (`default`) is PostgreSQL (pytest-django creates and drops
`test_<name>`). Partner databases are created once per session per backend, under
unique names, and dropped at the end; each test gets empty ones.
"""

import json
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import connections
from django.test import override_settings
from psycopg import sql

from infra.databases import connection_broker, partner_database_unregister
from infra.state import process_state_reset
from partners.models import Partner
from partners.services import partner_create, partner_provision
from tests.support.pgbouncer import PgBouncer, PgBouncerMissing

POSTGRES_SERVER = {"host": "127.0.0.1", "port": 5432, "user": "root", "dbname": "postgres"}
BACKENDS = ("sqlite", "postgres")
FIXTURES_DIR = Path(__file__).parent / "fixtures"
# TEST_THROUGH_PGBOUNCER=1: the PostgreSQL partner databases are reached through a real
# PgBouncer in transaction mode, started for the run (`make test` runs the postback
# tests a second time this way).
THROUGH_PGBOUNCER = os.environ.get("TEST_THROUGH_PGBOUNCER") == "1"
# PgBouncer's own bound on server connections in that pass (max_user_connections).
PGBOUNCER_SERVER_CONNECTIONS = 40


@pytest.fixture(scope="session")
def partner_server_port() -> Iterator[int]:
    """The port partner databases on PostgreSQL are reached at (PgBouncer's, in that pass)."""
    if not THROUGH_PGBOUNCER:
        yield POSTGRES_SERVER["port"]
        return
    try:
        bouncer = PgBouncer(max_server_connections=PGBOUNCER_SERVER_CONNECTIONS)
    except PgBouncerMissing as exc:
        raise pytest.UsageError(f"TEST_THROUGH_PGBOUNCER=1: {exc}") from exc
    options = settings.DATABASE_OPTIONS
    previous = dict(options)
    options.update(transaction_pooler=True, prepared_statements=False)
    yield bouncer.port
    options.clear()
    options.update(previous)
    bouncer.stop()


def pytest_configure(config: pytest.Config) -> None:
    from infra.databases.config import POSTGRES_ENGINES

    # Tests ask from 127.0.0.1: the embedded default's token-free local reads stay off
    # (here and in the servers tests start) unless a test turns them on.
    os.environ["LOOPBACK_READS_WITHOUT_TOKEN"] = "false"
    settings.LOOPBACK_READS_WITHOUT_TOKEN = False

    if settings.DATABASES["default"]["ENGINE"] not in POSTGRES_ENGINES:
        raise pytest.UsageError(
            "The test suite needs PostgreSQL for `default`: run `make test`, or set "
            "DATABASE_URL=postgres://root@127.0.0.1:5432/postback"
        )


def postgres_drop(prefix: str) -> None:
    """Drop every database named `prefix...` and the partners' roles in them (schema@prefix...),
    which have nothing left to own once their databases are gone."""
    with psycopg.connect(**POSTGRES_SERVER, autocommit=True) as conn:
        rows = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", [f"{prefix}%"])
        for (name,) in rows.fetchall():
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        roles = [
            role for (role,) in conn.execute("SELECT rolname FROM pg_roles WHERE rolname LIKE %s", [f"%@{prefix}%"])
        ]
        if roles:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.SQL(", ").join(map(sql.Identifier, roles))))


class DatabasePool:
    """Hands out partner database URLs per backend; drops the PostgreSQL ones at the end."""

    def __init__(self, tmp_dir: Path, port: int = POSTGRES_SERVER["port"]):
        self.token = uuid.uuid4().hex[:8]
        self.tmp_dir = tmp_dir
        self.port = port
        self.postgres_names: set[str] = set()

    def url(self, backend: str, name: str) -> str:
        """A partner's storage: a SQLite file, or a schema of this run's shared PostgreSQL database."""
        if backend == "sqlite":
            return f"sqlite:///{self.tmp_dir / name}.sqlite3"
        return f"{self.shared_url()}?schema={name}"

    def shared_url(self) -> str:
        return f"postgres://root@127.0.0.1:{self.port}/test_pb_{self.token}_shared"

    def database_url(self, name: str) -> str:
        """A PostgreSQL database of the partner's own."""
        database = f"test_pb_{self.token}_{name}"
        self.postgres_names.add(database)
        return f"postgres://root@127.0.0.1:{self.port}/{database}"

    def template(self, backend: str) -> str:
        if backend == "sqlite":
            return f"sqlite:///{self.tmp_dir}/tpl_{{name}}.sqlite3"
        return f"postgres://root@127.0.0.1:{self.port}/test_pb_{self.token}_tpl_{{name}}"

    def drop_all(self) -> None:
        connections.close_all()
        connection_broker.close_idle()
        postgres_drop(f"test_pb_{self.token}_")


@pytest.fixture(scope="session")
def database_pool(tmp_path_factory: pytest.TempPathFactory, partner_server_port: int) -> Iterator[DatabasePool]:
    pool = DatabasePool(tmp_path_factory.mktemp("partner_dbs"), partner_server_port)
    # This run's own schema template (PostgreSQL), dropped with its databases.
    previous_template = settings.PARTNER_DATABASE_TEMPLATE
    settings.PARTNER_DATABASE_TEMPLATE = f"test_pb_{pool.token}_template"
    yield pool
    settings.PARTNER_DATABASE_TEMPLATE = previous_template
    pool.drop_all()


@pytest.fixture(autouse=True)
def _fresh_process_state() -> Iterator[None]:
    """Each test starts without the caches, ledgers and breakers another test left."""
    process_state_reset()
    yield
    process_state_reset()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Run the test once with SQLite partner databases and once with PostgreSQL ones."""
    return request.param


@pytest.fixture(scope="session")
def django_db_setup(django_test_environment, django_db_blocker) -> Iterator[None]:
    """Create the test `default` database for every test that touches a database.

    pytest-django would only create it for tests marked django_db; tests using
    `live_db` are not, because partner aliases are registered at runtime.
    """
    from django.test.utils import setup_databases, teardown_databases

    # A name of its own, so concurrent test runs on one server never collide.
    default = connections["default"].settings_dict
    default["TEST"]["NAME"] = f"test_{default['NAME']}_{uuid.uuid4().hex[:8]}"
    with django_db_blocker.unblock():
        old_config = setup_databases(verbosity=0, interactive=False, aliases={"default"})
    yield
    with django_db_blocker.unblock():
        connections.close_all()
        connection_broker.close_idle()  # PostgreSQL drops no database with a session on it
        # DROP DATABASE is not bound by the service's statement timeout: on a busy machine it
        # can take longer than 5 s, and the run would end in an error after every test passed.
        connections["default"].settings_dict["OPTIONS"].pop("options", None)
        teardown_databases(old_config, verbosity=0)


@pytest.fixture
def live_db(django_db_setup, django_db_blocker) -> Iterator[None]:
    """Real, committed database access to `default` and to partner databases.

    Django's test cases refuse connections to aliases they did not know when the test
    started, and partner aliases are registered at runtime, so these tests run
    unwrapped and the configuration database is flushed afterwards instead.
    """
    with django_db_blocker.unblock():
        yield
        connections.close_all()
        call_command("flush", database="default", interactive=False, verbosity=0)


@pytest.fixture
def make_partner(live_db, database_pool: DatabasePool, backend: str) -> Iterator[Callable[..., Partner]]:
    """Create a provisioned partner on this test's backend; empties its database afterwards."""
    aliases: list[str] = []

    def make(code: str = "involve_asia", **fields: Any) -> Partner:
        definition = _seed_definition(code)
        definition.update(fields)
        definition.setdefault("database_url", database_pool.url(backend, definition["database_name"]))
        partner = partner_create(**definition)
        partner_provision(partner=partner)
        aliases.append(partner.database_alias)
        _empty(partner.database_alias)
        return partner

    yield make
    for alias in aliases:
        _empty(alias)
        partner_database_unregister(alias)


def _seed_definition(code: str) -> dict[str, Any]:
    from partners.services import SEED_PARTNERS

    for definition in SEED_PARTNERS:
        if definition["partner_code"] == code:
            return {**definition, "parameter_mapping": dict(definition["parameter_mapping"])}
    return {
        "partner_code": code,
        "partner_name": code.title(),
        "endpoint_path": f"/{code}/event",
        "database_name": f"{code}_db",
        "parameter_mapping": {},
    }


def _empty(alias: str) -> None:
    from conversions.ingest.refusals import refusal_ledger

    refusal_ledger.clear()  # no refusal count of this test lands after the DELETE
    with connections[alias].cursor() as cursor:
        cursor.execute("DELETE FROM publisher_delivery_attempts")
        cursor.execute("DELETE FROM publisher_deliveries")
        cursor.execute("DELETE FROM partner_conversion_changes")
        cursor.execute("DELETE FROM partner_conversions")
        cursor.execute("DELETE FROM postback_daily_counters")
        cursor.execute("DELETE FROM reconciliation_rows")
        cursor.execute("DELETE FROM reconciliation_runs")
    connections[alias].close()  # back to the broker, as a request would leave it


def run_concurrently(target: Callable[[int], Any], count: int) -> list[Any]:
    """Run target(i) for i in range(count) on `count` threads released together.

    The process is configured as gunicorn would be for `count` request threads: that
    many may work on one database, with connections for all of them.
    """
    with override_settings(DB_MAX_THREADS_PER_DATABASE=count, DB_MAX_CONNECTIONS=count + 2):
        return _run_concurrently(target, count)


def _run_concurrently(target: Callable[[int], Any], count: int) -> list[Any]:
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count

    def worker(index: int) -> None:
        try:
            barrier.wait()
            results[index] = target(index)
        except Exception as exc:  # reported to the test as the thread's result
            results[index] = exc
        finally:
            connections.close_all()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def fixture_postbacks(partner_code: str, name: str = "*") -> list[dict[str, Any]]:
    """Captured postbacks of a partner (tests/fixtures/<partner>/<name>.json), in order, each
    with the answer and stored values it must produce."""
    postbacks = []
    for path in sorted((FIXTURES_DIR / partner_code).glob(f"{name}.json")):
        postbacks += json.loads(path.read_text())["postbacks"]
    return postbacks


def fixture_queries(partner_code: str, name: str = "*") -> list[str]:
    """The query strings of a partner's captured GET postbacks."""
    return [postback["query"] for postback in fixture_postbacks(partner_code, name) if "query" in postback]


@pytest.fixture
def users(live_db) -> dict[str, Any]:
    """A superuser `root`, and staff users `manager` and `analyst` in the admin groups."""
    from django.contrib.auth.models import Group, User

    from partners.services import admin_groups_ensure

    admin_groups_ensure()
    made = {"root": User.objects.create_superuser("root", password="pw-root")}
    for username, group in (("manager", "Account managers"), ("analyst", "Analysts")):
        user = User.objects.create_user(username, password="pw-" + username, is_staff=True)
        user.groups.add(Group.objects.get(name=group))
        made[username] = user
    return made


@pytest.fixture
def manager_client(client, users):
    """The test client logged in as the account manager."""
    client.force_login(users["manager"])
    return client


@pytest.fixture
def analyst_client(client, users):
    """The test client logged in as the analyst."""
    client.force_login(users["analyst"])
    return client


@pytest.fixture
def involve(make_partner) -> Partner:
    return make_partner("involve_asia")


@pytest.fixture
def rector(make_partner) -> Partner:
    return make_partner("rector")


def partner_rows(partner: Partner):
    from conversions.models import PartnerConversion

    return PartnerConversion.objects.using(partner.database_alias).order_by("id")
