"""The process-wide connection broker: bounded, reused, released, re-pointed.

The broker's rules are checked with stand-in connections; what they mean for real
databases (connections held on the server, idle ones closed, a moved partner) is
checked against PostgreSQL.
"""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from django.db import connections

from infra.databases import ConnectionsExhausted, connection_broker
from infra.databases.broker import ConnectionBroker
from partners.selectors import partner_directory
from tests.conftest import POSTGRES_SERVER


class FakeConnection:
    opened = 0

    def __init__(self, key: str):
        FakeConnection.opened += 1
        self.key = key
        self.closed = False

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def broker(settings) -> ConnectionBroker:
    settings.DB_MAX_CONNECTIONS = 2
    settings.DB_POOL_MAX_SIZE = 0
    settings.DB_IDLE_SECONDS = 60
    settings.DB_CONN_MAX_AGE = 600
    settings.DB_CONNECT_TIMEOUT = 1
    return ConnectionBroker()


def take(broker: ConnectionBroker, key: str, *, healthy: bool = True) -> FakeConnection:
    return broker.acquire(key=key, alias=f"{key}_db", connect=lambda: FakeConnection(key), check=lambda raw: healthy)


def test_an_idle_connection_is_lent_again_instead_of_opening_one(broker):
    first = take(broker, "a")
    broker.release(first, reusable=True)
    assert take(broker, "a") is first
    assert broker.stats().open == 1


def test_at_the_limit_the_least_recently_used_idle_connection_makes_room(broker):
    a, b = take(broker, "a"), take(broker, "b")
    broker.release(a, reusable=True)
    broker.release(b, reusable=True)
    c = take(broker, "c")
    assert a.closed and not b.closed and not c.closed
    assert broker.stats().open == 2


def test_when_every_connection_is_in_use_a_request_waits_then_gives_up(broker):
    held = [take(broker, "a"), take(broker, "b")]
    started = time.monotonic()
    with pytest.raises(ConnectionsExhausted, match="all 2 database connections of this process are in use"):
        take(broker, "c")
    assert 0.9 < time.monotonic() - started < 2
    # one coming back while another thread waits is handed over
    threading.Timer(0.2, broker.release, args=(held[0],), kwargs={"reusable": True}).start()
    c = take(broker, "c")
    assert held[0].closed and c.key == "c"


def test_a_per_database_limit_caps_one_database_below_the_process_limit(broker, settings):
    settings.DB_MAX_CONNECTIONS = 5
    settings.DB_POOL_MAX_SIZE = 1
    first = take(broker, "a")
    threading.Timer(0.2, broker.release, args=(first,), kwargs={"reusable": True}).start()
    assert take(broker, "a") is first  # waited for it instead of opening a second one
    assert take(broker, "b").key == "b"


def test_connections_not_fit_for_reuse_are_closed(broker):
    raw = take(broker, "a")
    broker.release(raw, reusable=False)
    assert raw.closed and broker.stats().open == 0


def test_a_retired_alias_closes_its_idle_connections_and_those_in_use_when_they_return(broker):
    idle, busy = take(broker, "a"), take(broker, "a")
    broker.release(idle, reusable=True)
    broker.retire("a_db")
    assert idle.closed and not busy.closed
    broker.release(busy, reusable=True)
    assert busy.closed and broker.stats().open == 0


def test_an_idle_connection_that_fails_its_check_is_replaced(broker):
    raw = take(broker, "a")
    broker.release(raw, reusable=True)
    broker._idle[id(raw)].released_at -= 5  # idle long enough to be checked before reuse
    replacement = take(broker, "a", healthy=False)
    assert raw.closed and replacement is not raw


def test_idle_and_old_connections_are_swept(broker, settings):
    settings.DB_IDLE_SECONDS = 0.05
    raw = take(broker, "a")
    broker.release(raw, reusable=True)
    time.sleep(0.1)
    broker.sweep()
    assert raw.closed and broker.stats().open == 0


def test_after_a_fork_the_child_forgets_the_parents_connections_without_closing_them(broker):
    raw = take(broker, "a")
    broker._after_fork()
    assert broker.stats().open == 0 and not raw.closed


# --- against PostgreSQL ----------------------------------------------------------------


@pytest.fixture
def backend():
    return "postgres"


def server_connections(names: list[str]) -> int:
    with psycopg.connect(**POSTGRES_SERVER) as conn:
        return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = ANY(%s)", [names]).fetchone()[0]


def database_names(partners) -> list[str]:
    return [connections.settings[partner.database_alias]["NAME"] for partner in partners]


def test_postbacks_spread_over_many_partners_hold_a_bounded_set_of_connections(make_partner, client, settings):
    settings.DB_MAX_CONNECTIONS = 4
    partners = [make_partner(f"many{i:02d}") for i in range(12)]
    names = database_names(partners)
    connection_broker.close_idle()
    most = 0
    for round_ in range(3):
        for partner in partners:
            response = client.get(f"/partner/{partner.partner_code}/event?conversion_id=c{round_}")
            assert response.status_code == 200, response.content
            most = max(most, server_connections(names))
            assert connection_broker.stats().open <= 4
    assert most <= 4
    for partner in partners:
        assert partner_rows_count(partner) == 3


def partner_rows_count(partner) -> int:
    from conversions.models import PartnerConversion
    from infra.databases import partner_database

    with partner_database(partner) as alias:  # one connection at a time, like any visit of many partners
        return PartnerConversion.objects.using(alias).filter(is_duplicate=False).count()


def test_concurrent_postbacks_over_many_partners_share_the_process_limit(make_partner, settings):
    from django.test import Client

    settings.DB_MAX_CONNECTIONS = 6
    partners = [make_partner(f"share{i:02d}") for i in range(10)]
    names = database_names(partners)
    samples = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append(server_connections(names))
            time.sleep(0.02)

    def post(index: int) -> int:
        partner = partners[index % len(partners)]
        try:
            return Client().get(f"/partner/{partner.partner_code}/event?conversion_id=x{index}").status_code
        finally:
            connections.close_all()

    sampler = threading.Thread(target=sample)
    sampler.start()
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(post, range(200)))
    stop.set()
    sampler.join()
    assert statuses == [200] * 200
    assert max(samples) <= 6


def test_idle_connections_to_partner_databases_are_released(make_partner, client, settings):
    settings.DB_IDLE_SECONDS = 0.3
    partners = [make_partner(f"idle{i}") for i in range(3)]
    for partner in partners:
        assert client.get(f"/partner/{partner.partner_code}/event?conversion_id=i1").status_code == 200
    assert server_connections(database_names(partners)) >= 1
    deadline = time.monotonic() + 5
    while server_connections(database_names(partners)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert server_connections(database_names(partners)) == 0


def test_a_connection_the_server_dropped_is_not_lent_again(involve, client):
    assert client.get("/partner/involve/event?conversion_id=t1").status_code == 200
    name = connections.settings[involve.database_alias]["NAME"]
    with psycopg.connect(**POSTGRES_SERVER, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", [name])
    time.sleep(1.2)  # idle long enough to be checked before it is lent again
    response = client.get("/partner/involve/event?conversion_id=t2")
    assert response.status_code == 200 and response.json()["status"] == "success"


def test_a_moved_partner_database_is_used_by_every_thread_and_the_old_one_released(make_partner, database_pool, client):
    from partners.services import partner_provision

    partner = make_partner("mover", database_url=database_pool.database_url("mover_db"))
    old_name = connections.settings[partner.database_alias]["NAME"]
    other = ThreadPoolExecutor(1)  # a request thread that keeps its connection objects
    url = "/partner/mover/event?conversion_id={}"

    def post_from_other_thread(conversion_id: str) -> int:
        from django.test import Client

        return Client().get(url.format(conversion_id)).status_code

    try:
        assert other.submit(post_from_other_thread, "before").result() == 200
        partner.database_url = database_pool.database_url("mover_new_db")
        partner.save()
        partner_provision(partner=partner)
        partner_directory.clear()
        assert other.submit(post_from_other_thread, "after-other").result() == 200
        assert client.get(url.format("after-main")).status_code == 200
        new_name = connections.settings[partner.database_alias]["NAME"]
        assert new_name != old_name
        with psycopg.connect(**{**POSTGRES_SERVER, "dbname": new_name}) as conn:
            stored = {row[0] for row in conn.execute("SELECT conversion_id FROM partner_conversions")}
        with psycopg.connect(**{**POSTGRES_SERVER, "dbname": old_name}) as conn:
            left = {row[0] for row in conn.execute("SELECT conversion_id FROM partner_conversions")}
        assert stored == {"after-other", "after-main"} and left == {"before"}
        assert server_connections([old_name]) == 0
    finally:
        other.submit(connections.close_all).result()
        other.shutdown()


def test_connections_of_a_thread_that_ended_without_returning_them_are_taken_back(broker):
    held = []
    worker = threading.Thread(target=lambda: held.extend([take(broker, "a"), take(broker, "b")]))
    worker.start()
    worker.join()
    c = take(broker, "c")  # at the limit, nothing idle: the ended thread's connections are reclaimed
    assert all(raw.closed for raw in held) and c.key == "c"
    assert broker.stats().open == 1


def test_connections_taken_back_from_an_ended_thread_are_closed_before_their_places_are_reused(broker):
    """The process never has more than DB_MAX_CONNECTIONS open, even while the
    connections of an ended thread are being closed (a slow close: a server far away)."""
    open_now: set[int] = set()
    most_open = []
    closing = threading.Event()
    let_close = threading.Event()

    class SlowToClose(FakeConnection):
        def __init__(self, key: str):
            super().__init__(key)
            open_now.add(id(self))
            most_open.append(len(open_now))

        def close(self) -> None:
            closing.set()
            let_close.wait(2)
            open_now.discard(id(self))
            super().close()

    def take_slow(key: str) -> SlowToClose:
        return broker.acquire(key=key, alias=f"{key}_db", connect=lambda: SlowToClose(key), check=lambda raw: True)

    held = []
    worker = threading.Thread(target=lambda: held.extend([take_slow("a"), take_slow("b")]))
    worker.start()
    worker.join()  # ended with both of the process's 2 connections
    taken = []
    first = threading.Thread(target=lambda: taken.append(take_slow("c")))
    first.start()  # reclaims the ended thread's connections, and closes them
    assert closing.wait(2)
    second = threading.Thread(target=lambda: taken.append(take_slow("d")))
    second.start()
    time.sleep(0.3)  # while the ended thread's connections are still open
    let_close.set()
    first.join()
    second.join()
    assert sorted(raw.key for raw in taken) == ["c", "d"]
    assert all(raw.closed for raw in held)
    assert max(most_open) <= 2, most_open
    assert broker.stats().open == 2


def test_a_request_visits_only_the_connections_its_thread_holds(involve, monkeypatch):
    """Django visits every alias at each request's start and end; with one alias per
    partner that visit grows with the partners. Here it must not happen at all."""
    import io

    from django.core.handlers.wsgi import WSGIHandler

    from infra.databases.requests import request_edges_install

    # As in a server process (Django's test client puts Django's own handlers back).
    request_edges_install()

    def every_alias(*args, **kwargs):
        raise AssertionError("a request visited every configured database alias")

    handler = WSGIHandler()
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/partner/involve/event",
        "QUERY_STRING": "conversion_id=edges-1",
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(),
        "wsgi.errors": io.StringIO(),
    }
    statuses = []
    with monkeypatch.context() as patch:
        patch.setattr(connections, "all", every_alias)
        response = handler(environ, lambda status, headers: statuses.append(status))
        body = b"".join(response)
        response.close()  # the end of the request, as a WSGI server calls it
    assert statuses == ["200 OK"], body
    assert connections[involve.database_alias].connection is None  # given back at the end
