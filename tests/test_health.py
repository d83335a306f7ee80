"""`/health` and `/info`. (The first boot, before and after init_partners, runs against
a fresh database in tests/e2e/test_image.py; bench/health_bench.py times /health with
1,000 partners.)"""

import statistics
import time

import psycopg
import pytest
from django.db import connections
from django.test.utils import CaptureQueriesContext
from psycopg import sql

import infra.databases.broker
import postback_site.views
from infra.databases import NOT_PROVISIONED, partner_database_unregister
from infra.databases.breaker import database_guard
from partners.models import Partner
from partners.selectors import partner_directory
from partners.services import partner_create
from tests.conftest import POSTGRES_SERVER

MANY = 1000
PROBES = 20


def test_health_is_200_when_every_database_answers(client, involve, rector, backend):
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "databases": {"default": "ok", "involve_asia_db": "ok", "rector_db": "ok"},
        # PostgreSQL: two schemas of one shared database; SQLite: two files in one directory.
        "checked": {"partners": 2, "databases": 1 if backend == "postgres" else 2, "probed": 1},
    }


def _down_partner(backend: str) -> Partner:
    return partner_create(
        partner_code="down",
        partner_name="Down",
        endpoint_path="/down/event",
        database_name="down_db",
        database_url="postgres://root@127.0.0.1:1/x" if backend == "postgres" else "sqlite:////nonexistent/d/x.sqlite3",
    )


def test_one_partner_that_cannot_serve_is_named_without_failing_the_service(client, involve, backend):
    _down_partner(backend)
    response = client.get("/health")
    assert response.status_code == 200  # the platform keeps routing: the other partners are served
    body = response.json()
    assert body["status"] == "degraded"
    assert body["failing"] == ["down_db"]
    assert body["databases"]["involve_asia_db"] == "ok" and body["databases"]["down_db"] != "ok"
    assert body["message"] == "Unreachable or not provisioned: down_db; the other 1 partner(s) are served"
    assert client.get("/partner/involve/event?conversion_id=h1").status_code == 200
    # that partner's own full check, and its postbacks, say it cannot serve
    assert client.get("/health?partner=down").status_code == 503
    assert client.get("/partner/down/event?conversion_id=h1").status_code == 503


def test_a_service_none_of_whose_partners_can_serve_is_503(client, involve, backend, settings):
    _down_partner(backend)
    settings.POSTBACK_PARTNERS = ["down"]  # a service of that partner alone
    response = client.get("/health")
    assert response.status_code == 503 and response["Retry-After"]
    body = response.json()
    assert (body["status"], body["failing"]) == ("error", ["down_db"])
    assert body["message"] == "Unreachable or not provisioned: down_db"


def test_health_serves_only_configured_partners(client, involve, rector, settings):
    settings.POSTBACK_PARTNERS = ["rector"]
    assert client.get("/health").json()["databases"] == {"default": "ok", "rector_db": "ok"}
    assert client.get("/partner/involve/event?conversion_id=x").status_code == 404
    assert client.get("/partner/rector/event?conversion_id=x").status_code == 200


def test_info_lists_partners_without_secrets(client, make_partner, tmp_path):
    make_partner("involve_asia", database_url=f"sqlite:///{tmp_path}/never-shown-s3cret.sqlite3")
    body = client.get("/info").json()
    assert body["version"]
    assert body["partners"] == [
        {
            "code": "involve_asia",
            "name": "InvolveAsia",
            "endpoint": "/involve/event",
            "postback_url": "http://testserver/partner/involve/event",
            "also_accepted": ["http://testserver/involve/event", "http://testserver/postback/involve/event"],
            "database": "involve_asia_db",
            "timezone": "UTC",
        }
    ]
    assert "s3cret" not in client.get("/info").content.decode()


def test_health_names_a_partner_database_that_exists_but_is_not_provisioned(client, involve, database_pool, backend):
    # PostgreSQL: a schema of the shared database that does not exist yet (nor its role);
    # SQLite: a file, created empty when it is opened.
    partner_create(
        partner_code="fresh",
        partner_name="Fresh",
        endpoint_path="/fresh/event",
        database_name="fresh_db",
        database_url=database_pool.url(backend, "empty_db"),
    )
    try:
        response = client.get("/health")
        assert response.status_code == 200
        body = response.json()
        assert body["status"] == "degraded"
        assert body["databases"]["fresh_db"] == NOT_PROVISIONED
        assert body["databases"]["involve_asia_db"] == "ok"
        assert body["failing"] == ["fresh_db"]
        # the full check of that partner says the same
        response = client.get("/health?partner=fresh")
        assert response.status_code == 503
        assert response.json()["databases"] == {"default": "ok", "fresh_db": NOT_PROVISIONED}
    finally:
        partner_database_unregister("fresh_db")


def test_health_names_migrations_still_to_apply_on_the_configuration_database(client, involve):
    postback_site.views._migrated.clear()
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT id, app, name, applied FROM django_migrations WHERE app = 'partners' ORDER BY name DESC")
        latest = cursor.fetchone()
        cursor.execute("DELETE FROM django_migrations WHERE id = %s", [latest[0]])
    try:
        response = client.get("/health")
        assert response.status_code == 503
        assert response["Retry-After"]
        body = response.json()
        assert body["failing"] == ["default"]
        expected = f"1 unapplied migration(s) (partners.{latest[2]}): run `python manage.py init_partners`"
        assert body["databases"] == {"default": expected}
        assert body["message"] == f"configuration database {expected}"
    finally:
        with connections["default"].cursor() as cursor:
            cursor.execute("INSERT INTO django_migrations (id, app, name, applied) VALUES (%s, %s, %s, %s)", latest)
    assert client.get("/health").status_code == 200


# --- One partner's full check: /health?partner=CODE ---------------------------------


def test_health_of_one_partner_runs_its_full_check(client, involve, rector):
    response = client.get("/health?partner=rector")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "databases": {"default": "ok", "rector_db": "ok"},
        "partner": "rector",
    }


def test_health_of_one_partner_names_its_migrations_still_to_apply(client, involve):
    with connections[involve.database_alias].cursor() as cursor:
        cursor.execute(
            "SELECT id, app, name, applied FROM django_migrations WHERE app = 'conversions' ORDER BY name DESC"
        )
        latest = cursor.fetchone()
        cursor.execute("DELETE FROM django_migrations WHERE id = %s", [latest[0]])
    connections[involve.database_alias].close()
    try:
        response = client.get("/health?partner=involve_asia")
        assert response.status_code == 503
        assert response["Retry-After"]
        body = response.json()
        expected = f"1 unapplied migration(s) ({latest[1]}.{latest[2]}): run `python manage.py init_partners`"
        assert body["databases"] == {"default": "ok", "involve_asia_db": expected}
        assert body["failing"] == ["involve_asia_db"]
        assert body["partner"] == "involve_asia"
    finally:
        with connections[involve.database_alias].cursor() as cursor:
            cursor.execute("INSERT INTO django_migrations (id, app, name, applied) VALUES (%s, %s, %s, %s)", latest)
        connections[involve.database_alias].close()


def test_health_of_an_unknown_or_unserved_partner_is_a_404_naming_it(client, involve, rector, settings):
    response = client.get("/health?partner=nosuch")
    assert response.status_code == 404
    assert response.json() == {"status": "error", "message": "Unknown partner 'nosuch': no active partner served here"}
    settings.POSTBACK_PARTNERS = ["rector"]
    assert client.get("/health?partner=involve_asia").status_code == 404
    Partner.objects.filter(partner_code="rector").update(is_active=False)
    assert client.get("/health?partner=rector").status_code == 404


# --- Many partners: the summary check's cost does not grow with them -------------------


class RoundTrips:
    """Statements sent to PostgreSQL by this process (at the driver: Django's queries, the
    schema switches, the broker's checks) and connections opened, while counting."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, settings) -> None:
        # Connections are neither aged out nor closed idle while counting (a slow machine
        # would otherwise replace one now and then, whatever /health does).
        settings.DB_CONN_MAX_AGE = settings.DB_IDLE_SECONDS = 3600
        self.statements = 0
        self.connections = 0
        execute, connect = psycopg.Cursor.execute, psycopg.connect

        def counted_execute(cursor, *args, **kwargs):
            self.statements += 1
            return execute(cursor, *args, **kwargs)

        def counted_connect(*args, **kwargs):
            self.connections += 1
            return connect(*args, **kwargs)

        monkeypatch.setattr(psycopg.Cursor, "execute", counted_execute)
        monkeypatch.setattr(psycopg, "connect", counted_connect)
        # An idle connection is checked with a round trip after 1 s: not while counting.
        monkeypatch.setattr(infra.databases.broker, "CHECK_AFTER_IDLE_SECONDS", 3600.0)

    def per_probe(self, client, probes: int, status: int = 200) -> tuple[list[tuple[int, int, int]], list[float]]:
        """(statements, connections opened, queries on `default`) of each probe, and its seconds."""
        costs, seconds = [], []
        for _ in range(probes):
            statements, opened = self.statements, self.connections
            with CaptureQueriesContext(connections["default"]) as default_queries:
                started = time.perf_counter()
                response = client.get("/health")
                seconds.append(time.perf_counter() - started)
            assert response.status_code == status, response.json()
            costs.append((self.statements - statements, self.connections - opened, len(default_queries)))
        return costs, seconds


def _partners_add(names: list[str]) -> None:
    """Partner rows, at once (as partner_create leaves them: the process's directory re-read)."""
    Partner.objects.bulk_create(
        Partner(partner_code=name[:-3], partner_name=name, endpoint_path=f"/{name[:-3]}/event", database_name=name)
        for name in names
    )
    partner_directory.clear()


def _report(label: str, seconds: list[float]) -> None:
    ordered = sorted(seconds)
    p99 = ordered[max(0, -(-len(ordered) * 99 // 100) - 1)]  # nearest rank
    print(
        f"\n{label}: {len(ordered)} probes, median {statistics.median(ordered) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms"
    )


def _schemas(database_pool, names: list[str], *, drop: bool = False) -> None:
    """Create (with the table /health looks for) or drop partners' schemas of the shared database."""
    dbname = database_pool.shared_url().rsplit("/", 1)[1]
    with psycopg.connect(**{**POSTGRES_SERVER, "dbname": dbname}, autocommit=True) as conn:
        statements = [
            sql.SQL(
                "DROP SCHEMA IF EXISTS {} CASCADE"
                if drop
                else "CREATE SCHEMA {0}; CREATE TABLE {0}.partner_conversions (id int)"
            ).format(sql.Identifier(name))
            for name in names
        ]
        conn.execute(sql.SQL("; ").join(statements))


@pytest.mark.parametrize("backend", ["postgres"])
def test_summary_check_costs_as_many_round_trips_with_1000_partners_in_a_shared_database(
    client, involve, rector, database_pool, settings, monkeypatch
):
    settings.PARTNER_DATABASE_URL = database_pool.shared_url()  # no {name}: one schema each
    settings.PARTNER_CACHE_SECONDS = 3600  # no periodic re-read of the partners while counting
    counter = RoundTrips(monkeypatch, settings)
    client.get("/health")  # first probe: the migration files are read, aliases registered
    few, _ = counter.per_probe(client, PROBES)

    names = [f"p{i:04d}_db" for i in range(MANY)]
    _partners_add(names)
    try:
        # Not provisioned yet: named so, from one query, whatever their number.
        body = client.get("/health").json()
        assert body["failing"] == names
        assert set(body["databases"].values()) == {"ok", NOT_PROVISIONED}
        assert ", p0009_db and 990 more; the other 2 partner(s) are served" in body["message"]
        not_provisioned, _ = counter.per_probe(client, PROBES)  # degraded: involve and rector are served

        _schemas(database_pool, names)  # "provisioned" as far as the summary check looks
        client.get("/health")
        many, seconds = counter.per_probe(client, PROBES)
        body = client.get("/health").json()
    finally:
        _schemas(database_pool, names, drop=True)
    assert len(body["databases"]) == MANY + 3 and set(body["databases"].values()) == {"ok"}
    assert body["checked"] == {"partners": MANY + 2, "databases": 1, "probed": 1}
    # the same statements, connections and `default` queries on every probe, with 2 partners or 1,002
    assert len(set(few)) == 1, few
    assert set(many) == set(few) == set(not_provisioned), (few, many, not_provisioned)
    statements, opened, default_queries = few[0]
    assert opened == 0  # connections come back to the broker and are reused
    assert default_queries == 2  # reachable, initialised (its migrations were found complete once)
    assert statements <= 15
    _report(f"/health, {MANY} partners in one shared database (not asserted)", seconds)


@pytest.mark.parametrize("backend", ["postgres"])
def test_summary_check_probes_one_database_of_its_own_per_server(
    client, make_partner, database_pool, settings, monkeypatch
):
    """Databases of their own (PARTNER_DATABASE_URL with {name}): one full check per server,
    one query for which of them exist; no connection to any other."""
    make_partner("involve_asia", database_url=database_pool.database_url("involve_asia_db"))
    make_partner("rector", database_url=database_pool.database_url("rector_db"))
    settings.PARTNER_DATABASE_URL = database_pool.database_url("{name}")
    settings.PARTNER_CACHE_SECONDS = 3600
    counter = RoundTrips(monkeypatch, settings)
    client.get("/health")
    few, _ = counter.per_probe(client, 5)

    names = [f"q{i:04d}_db" for i in range(200)]  # their databases are not created
    _partners_add(names)
    body = client.get("/health").json()
    assert body["databases"]["involve_asia_db"] == body["databases"]["rector_db"] == "ok"
    assert {body["databases"][name] for name in names} == {NOT_PROVISIONED}
    assert body["checked"] == {"partners": 202, "databases": 202, "probed": 1}
    many, _ = counter.per_probe(client, 5)  # degraded: involve and rector are served
    assert set(many) == set(few), (few, many)
    assert few[0][1] == 0


@pytest.mark.parametrize("backend", ["postgres"])
@pytest.mark.parametrize("layout", ["shared", "own"])
def test_summary_check_reports_an_open_breaker_without_connecting_then_probes_it_when_due(
    client, make_partner, database_pool, settings, monkeypatch, layout
):
    """A partner whose breaker a postback opened (its schema's in a shared database, its
    database's otherwise) is reported failing from the process's state, without a query;
    once the breaker's time is up, the check is its probe."""
    own = {"database_url": database_pool.database_url("involve_asia_db")} if layout == "own" else {}
    make_partner("involve_asia", **own)
    own = {"database_url": database_pool.database_url("rector_db")} if layout == "own" else {}
    rector = make_partner("rector", **own)
    settings.DB_BREAKER_SECONDS = 0.5
    guard = database_guard(rector.database_alias)
    guard.release(guard.admit(rector.database_alias), failure="connection refused")  # as a postback would
    assert not database_guard("involve_asia_db").is_open  # its neighbour's breaker is its own

    with CaptureQueriesContext(connections[rector.database_alias]) as rector_queries:
        response = client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "degraded"
    assert body["databases"] == {
        "default": "ok",
        "involve_asia_db": "ok",
        "rector_db": "failing, not retried for a few seconds: connection refused",
    }
    assert body["failing"] == ["rector_db"]
    assert body["checked"]["probed"] == 1  # involve_asia's full check only
    assert len(rector_queries) == 0

    time.sleep(0.6)  # the breaker's time is up: the next request is its probe
    response = client.get("/health")
    assert response.status_code == 200, response.json()
    assert response.json()["checked"]["probed"] == 2
    assert not guard.is_open
