"""Many partners on one PostgreSQL server, through real gunicorn.

PostgreSQL here allows 100 connections: 150 partner databases cannot each keep one.
Connections come from a bounded set per worker (DB_MAX_CONNECTIONS), so an instance
never holds more than WEB_CONCURRENCY x DB_MAX_CONNECTIONS, whatever the number of
partners; a partner whose database moves, breaks or is deactivated is followed by every
instance within PARTNER_CACHE_SECONDS.
"""

import contextlib
import os
import socket
import threading
import time
import urllib.request
from collections import Counter
from itertools import count
from pathlib import Path

import psycopg
import pytest

from tests.conftest import PGBOUNCER_SERVER_CONNECTIONS, POSTGRES_SERVER, THROUGH_PGBOUNCER
from tests.e2e.load import load, percentile
from tests.e2e.server import fetch, manage, running_server

pytestmark = pytest.mark.e2e

PARTNERS = 150
# Closed connections whose server process may still be listed when sampled.
EXITING_BACKENDS = 4
ESTABLISHED = "01"  # the TCP state in /proc/net/tcp


def metric(base: str, name: str) -> float:
    request = urllib.request.Request(base + "/metrics", headers={"Authorization": "Bearer scrape"})
    text = urllib.request.urlopen(request, timeout=10).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + " "))


def _held_connections(ancestor: int, port: int) -> int:
    """Established TCP connections to `port` held by the processes `ancestor` started (not by itself)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(stat.parent.name))
    descendants, todo = set(), list(children.get(ancestor, []))
    while todo:
        pid = todo.pop()
        descendants.add(pid)
        todo += children.get(pid, [])
    inodes = set()
    for pid in descendants:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    link = os.readlink(fd)
                    if link.startswith("socket:["):
                        inodes.add(link[8:-1])
    # A set: the kernel lists the table a page at a time, and a connection opened or
    # closed between two pages can make one read list another connection twice.
    held = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if int(fields[2].rsplit(":", 1)[1], 16) == port and fields[3] == ESTABLISHED and fields[9] in inodes:
                    held.add(fields[9])
    return len(held)


def add_partners(env: dict, codes: list[str]) -> None:
    script = (
        "from partners.models import Partner\n"
        f"codes = {codes!r}\n"
        "Partner.objects.bulk_create([Partner(partner_code=c, partner_name=c, endpoint_path=f'/{c}/event',"
        " database_name=f'{c}_db', max_daily_requests=0) for c in codes])\n"
    )
    added = manage(env, "shell", "-c", script)
    assert added.returncode == 0, added.stderr


def eventually(condition, seconds: float = 3) -> bool:
    """Whether `condition()` becomes true within `seconds`."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def server_connections(prefix: str) -> int:
    with psycopg.connect(**POSTGRES_SERVER) as conn:
        return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname LIKE %s", [prefix + "%"]).fetchone()[0]


def originals(env: dict, database: str) -> set[str]:
    with psycopg.connect(**{**POSTGRES_SERVER, "dbname": env["_PREFIX"] + database}) as conn:
        rows = conn.execute(
            "SELECT conversion_id FROM partner_conversions WHERE NOT is_duplicate AND processing_error IS NULL"
        ).fetchall()
    return {conversion_id for (conversion_id,) in rows}


class Sampler:
    """Samples every 20 ms the connections held to this test's databases.

    Directly on PostgreSQL: the TCP connections to the server that the processes this
    test started (gunicorn's master and workers) hold open, read from /proc, exactly
    what the broker bounds: a connection counts once, and only if it is still
    established after the processes' descriptors were read, so every one counted was
    open at the same moment. (The server's own list also shows backends of connections
    already closed while their process is still exiting, more of them the busier the
    machine.) Through PgBouncer: the server's connections, which PgBouncer bounds.
    """

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        if not THROUGH_PGBOUNCER:
            while not self._stop.is_set():
                self.samples.append(_held_connections(os.getpid(), POSTGRES_SERVER["port"]))
                time.sleep(0.02)
            return
        with psycopg.connect(**POSTGRES_SERVER, autocommit=True) as conn:
            while not self._stop.is_set():
                query = "SELECT count(*) FROM pg_stat_activity WHERE datname LIKE %s AND pid <> pg_backend_pid()"
                self.samples.append(conn.execute(query, [self.prefix + "%"]).fetchone()[0])
                time.sleep(0.02)

    def __enter__(self) -> "Sampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def test_postbacks_spread_over_150_partners_use_a_bounded_set_of_connections(postgres_env, tmp_path):
    env = {**postgres_env, "DB_MAX_CONNECTIONS": "10", "METRICS_TOKEN": "scrape"}
    codes = [f"net{i:03d}" for i in range(PARTNERS)]
    add_partners(env, codes)
    init = manage(env, "init_partners")
    assert init.returncode == 0, init.stderr
    assert f"provisioned {PARTNERS + 2} partner database(s) in" in init.stdout
    # Provisioning left nothing open (through PgBouncer: only what PgBouncer keeps idle),
    # once the command's own sessions have finished exiting.
    bound = PGBOUNCER_SERVER_CONNECTIONS if THROUGH_PGBOUNCER else 2 * 10
    kept_idle = PGBOUNCER_SERVER_CONNECTIONS if THROUGH_PGBOUNCER else 0
    assert eventually(lambda: server_connections(env["_PREFIX"]) <= kept_idle)

    ids = count()
    with running_server(env, tmp_path / "server.log", workers=2, threads=4) as base:

        def next_path(client: int, n: int) -> str:
            i = next(ids)
            return f"/partner/{codes[i % PARTNERS]}/event?conversion_id=c{i}"

        with Sampler(env["_PREFIX"]) as sampler:
            answers = load(base, next_path, clients=16, seconds=15)
        peak = metric(base, "postback_database_connections_peak")
    statuses = Counter(answer.status for answer in answers)
    assert statuses == {200: len(answers)}, statuses
    assert Counter(answer.outcome for answer in answers) == {"success": len(answers)}
    # Every partner got postbacks, and the bound held: the workers never had more than
    # 2 x DB_MAX_CONNECTIONS open. On the server (through PgBouncer: PgBouncer's
    # max_user_connections), give or take the closed ones whose backend process is
    # still exiting when it is sampled (PostgreSQL lists it until it is gone).
    assert len(answers) > PARTNERS
    assert peak <= 2 * 10
    slack = EXITING_BACKENDS if THROUGH_PGBOUNCER else 0
    assert max(sampler.samples) >= 2, "the sampler saw the connections the workers hold"
    assert max(sampler.samples) <= bound + slack, sorted(Counter(sampler.samples).items())
    stored = set()
    for code in codes:
        stored |= originals(env, f"{code}_db")
    sent = {answer.path.rsplit("=", 1)[1] for answer in answers}
    assert stored == sent


def test_a_moved_broken_restored_and_deactivated_partner_is_followed_by_two_instances(postgres_env, tmp_path):
    env = {**postgres_env, "PARTNER_CACHE_SECONDS": "1", "DB_BREAKER_SECONDS": "0.5"}
    prefix = env["_PREFIX"]

    def set_url(url: str) -> tuple[float, float]:
        """Change the partner's URL from another process; (before, after) the change."""
        before = time.monotonic()
        changed = manage(
            env,
            "shell",
            "-c",
            "from partners.models import Partner; from partners.services import partner_provision\n"
            f"p = Partner.objects.get(partner_code='rector'); p.database_url = {url!r}\n"
            f"{'partner_provision(partner=p)' if url.endswith('moved_db') else 'pass'}\n"
            "p.save()",
        )
        assert changed.returncode == 0, changed.stderr
        return before, time.monotonic()

    moved_url = f"postgres://root@127.0.0.1:5432/{prefix}moved_db"
    ids = count()
    phases: list[tuple[str, float]] = []
    with (
        running_server(env, tmp_path / "a.log", workers=2, threads=4) as first,
        running_server(env, tmp_path / "b.log", workers=2, threads=4) as second,
    ):
        stop = threading.Event()
        answers = []

        def next_path(client: int, n: int) -> str | None:
            return None if stop.is_set() else f"/partner/rector/event?conversion_id=m{next(ids)}"

        def drive(base: str) -> None:
            answers.extend((base, answer) for answer in load(base, next_path, clients=3, seconds=60, pause=0.005))

        drivers = [threading.Thread(target=drive, args=(base,)) for base in (first, second)]
        for driver in drivers:
            driver.start()
        time.sleep(2)
        phases.append(("moved", set_url(moved_url)))
        time.sleep(4)
        phases.append(("broken", set_url("postgres://root@127.0.0.1:1/nowhere")))
        time.sleep(4)
        phases.append(("restored", set_url(moved_url)))
        time.sleep(5)
        stop.set()
        for driver in drivers:
            driver.join()
        deactivated = manage(
            env,
            "shell",
            "-c",
            "from partners.models import Partner; Partner.objects.filter("
            "partner_code='rector').update(is_active=False)",
        )
        assert deactivated.returncode == 0, deactivated.stderr
        time.sleep(1.5)
        after_deactivation = [fetch(f"{base}/partner/rector/event?conversion_id=off")[0] for base in (first, second)]
    (_, moved_at), (broken_from, broken_at), (restored_from, restored_at) = (at for _, at in phases)
    longest = max(answer.seconds for _, answer in answers)
    settled = 1 + longest + 0.5  # PARTNER_CACHE_SECONDS, the longest request, a breaker pause
    old = originals(env, "rector_db")
    new = originals(env, "moved_db")
    for base, answer in answers:
        conversion_id = answer.path.rsplit("=", 1)[1]
        if answer.status == 200 and moved_at + settled < answer.started < broken_from:
            assert conversion_id in new and conversion_id not in old, (base, answer)
        if answer.started > restored_at + settled:
            # recovered with no restart, on both instances
            assert answer.status == 200 and conversion_id in new, (base, answer)
        if answer.status == 200:
            assert (conversion_id in old) != (conversion_id in new)
    broken = [answer for _, answer in answers if broken_at + settled < answer.started < restored_from]
    assert broken and all(answer.status == 503 for answer in broken), Counter((a.status, a.outcome) for a in broken)
    for base in (first, second):
        assert any(b == base and a.started > restored_at + settled for b, a in answers)
    assert after_deactivation == [404, 404]


class FreezableProxy:
    """A TCP proxy to PostgreSQL that can freeze: from then on nothing it receives is
    passed on and new connections are accepted and never answered (a hung database)."""

    def __init__(self, port: int = 5432) -> None:
        self.upstream = port
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.frozen = threading.Event()
        self.closed = threading.Event()
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            self.sockets.append(client)
            if self.frozen.is_set():
                continue
            server = socket.create_connection(("127.0.0.1", self.upstream))
            self.sockets.append(server)
            for source, target in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                if self.frozen.is_set():
                    self.closed.wait()
                    return
                target.sendall(data)
        except OSError:
            pass

    def close(self) -> None:
        self.closed.set()
        self.sock.close()
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.close()


def test_a_hung_partner_database_does_not_slow_the_other_partners(postgres_env, tmp_path):
    """16 clients: 4 post to involve, 12 to a partner whose database then hangs (a
    proxy that stops answering, established connections included). The hung database
    holds its share of the threads (DB_MAX_THREADS_PER_DATABASE per worker) and no
    more: involve is answered 200 every time, its p99 within 3x the same run's p99
    before the database hung."""
    env = postgres_env
    proxy = FreezableProxy()
    prefix = env["_PREFIX"]
    url = f"postgres://root@127.0.0.1:{proxy.port}/{prefix}flaky_db"
    added = manage(
        env,
        "shell",
        "-c",
        "from partners.services import partner_create, partner_provision;"
        "p = partner_create(partner_code='flaky', partner_name='Flaky', endpoint_path='/flaky/event',"
        f" database_name='flaky_db', database_url='{url}', max_daily_requests=0); partner_provision(partner=p)",
    )
    assert added.returncode == 0, added.stderr
    ids = count()

    def involve(client: int, n: int) -> str:
        return f"/partner/involve/event?conversion_id=ok{next(ids)}"

    def flaky(client: int, n: int) -> str:
        return f"/partner/flaky/event?conversion_id=f{next(ids)}"

    def run(seconds: float) -> tuple[list, list]:
        flaky_answers: list = []
        flood = threading.Thread(target=lambda: flaky_answers.extend(load(base, flaky, clients=12, seconds=seconds)))
        flood.start()
        involve_answers = load(base, involve, clients=4, seconds=seconds)
        flood.join()
        return involve_answers, flaky_answers

    try:
        with running_server(env, tmp_path / "server.log", workers=2, threads=4) as base:
            run(2)  # warm up
            before, flaky_before = run(8)
            proxy.frozen.set()
            during, flaky_during = run(12)
            proxy.close()  # let the held threads go before the server stops
    finally:
        proxy.close()
    assert {answer.status for answer in before + flaky_before} == {200}
    assert {answer.status for answer in during} == {200}
    assert Counter(answer.status for answer in flaky_during)[503] > 100
    p99_before = percentile([answer.seconds for answer in before], 0.99)
    p99_during = percentile([answer.seconds for answer in during], 0.99)
    print(f"other partner p99: {p99_before * 1000:.1f} ms before the hang, {p99_during * 1000:.1f} ms during it")
    assert p99_during < 3 * p99_before
