"""Slow and idle clients against a real gunicorn (2 workers x 4 threads): they wait in the
worker's event loop and hold no thread, so normal postbacks keep their latency."""

import http.client
import statistics
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from tests.conftest import POSTGRES_SERVER
from tests.e2e.raw_http import address, open_files_allow
from tests.e2e.server import running_server

pytestmark = pytest.mark.e2e

SLOW_CLIENTS = 64
IDLE_CLIENTS = 600
# Per phase: a p99 over 1,000 answers is steady enough on a shared 2-core machine, over 400 it is not.
POSTBACKS = 1000
DRIP_SECONDS = 2.0


def postback_latencies(base: str, label: str, count: int = POSTBACKS) -> list[float]:
    """Send `count` new conversions (4 at a time, a new connection each, as partners do);
    every answer must be a 200; return their latencies in seconds."""
    host, port = address(base)
    failed = threading.Event()

    def one(index: int) -> float:
        if failed.is_set():  # one failure fails the test: do not wait for a thousand more
            return 0.0
        started = time.perf_counter()
        connection = http.client.HTTPConnection(host, port, timeout=10)
        try:
            connection.request("GET", f"/partner/involve/event?conversion_id={label}-{index}&usd_payout=1.25")
            response = connection.getresponse()
            response.read()
            assert response.status == 200, (label, index, response.status)
        except BaseException:
            failed.set()
            raise
        finally:
            connection.close()
        return time.perf_counter() - started

    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(one, range(count)))


def p99(latencies: list[float]) -> float:
    return statistics.quantiles(latencies, n=100)[98]


class SlowClients:
    """SLOW_CLIENTS connections that send a request one byte every DRIP_SECONDS, never finishing
    it (`headers`: the head; `body`: a whole head, then the body), and IDLE_CLIENTS that never speak."""

    def __init__(self, base: str, attack: str):
        self.base = base
        self.attack = attack
        self.stopped = threading.Event()
        self.idle = []
        self.slow = []
        self.bytes_sent = 0

    def __enter__(self) -> "SlowClients":
        import socket

        for _ in range(IDLE_CLIENTS):
            self.idle.append(socket.create_connection(address(self.base), timeout=5))
        head = b"POST /partner/involve/event HTTP/1.1\r\nHost: localhost\r\n"
        if self.attack == "body":
            head += b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 5000\r\n\r\nconversion_id=slow"
        for _ in range(SLOW_CLIENTS):
            sock = socket.create_connection(address(self.base), timeout=5)
            sock.sendall(head)
            self.slow.append(sock)
        self.thread = threading.Thread(target=self._drip, daemon=True)
        self.thread.start()
        time.sleep(2 * DRIP_SECONDS)  # every slow client is past its first drip
        return self

    def _drip(self) -> None:
        drip = b"x" if self.attack == "body" else b"X"
        while not self.stopped.is_set():
            for sock in self.slow:  # spread over the interval, as separate clients would
                if self.stopped.wait(DRIP_SECONDS / SLOW_CLIENTS):
                    return
                sock.sendall(drip)
                self.bytes_sent += 1

    def still_open(self) -> int:
        """How many slow clients the server has neither answered nor closed."""
        open_count = 0
        for sock in self.slow:
            sock.setblocking(False)
            try:
                sock.recv(1)
            except BlockingIOError:
                open_count += 1
            except OSError:
                pass
        return open_count

    def __exit__(self, *exc_info) -> None:
        self.stopped.set()
        self.thread.join(timeout=10)
        for sock in self.slow + self.idle:
            sock.close()


@pytest.mark.parametrize("attack", ["headers", "body"])
def test_slow_and_idle_clients_do_not_slow_postbacks(postgres_env, tmp_path, attack):
    open_files_allow(4 * (SLOW_CLIENTS + IDLE_CLIENTS))
    # Deadlines longer than the test: the slow clients stay connected all along.
    env = {**postgres_env, "GUNICORN_HEADER_TIMEOUT": "120", "GUNICORN_BODY_TIMEOUT": "120"}
    run = uuid.uuid4().hex[:6]
    with running_server(env, tmp_path / "server.log", workers=2, threads=4) as base:
        postback_latencies(base, f"warm-{run}", 200)
        before = postback_latencies(base, f"before-{run}")
        with SlowClients(base, attack) as clients:
            during = postback_latencies(base, f"during-{run}")
            held = clients.still_open()
            dripped = clients.bytes_sent
        after = postback_latencies(base, f"after-{run}")

    baseline = p99(before + after)
    attacked = p99(during)
    print(
        f"\n{attack}: p99 without {baseline * 1000:.1f} ms, with {SLOW_CLIENTS} slow + {IDLE_CLIENTS} idle clients "
        f"{attacked * 1000:.1f} ms; medians {statistics.median(before + after) * 1000:.1f} / "
        f"{statistics.median(during) * 1000:.1f} ms; {dripped} bytes dripped"
    )
    assert held == SLOW_CLIENTS, "the slow clients were connected throughout"
    assert dripped >= SLOW_CLIENTS
    assert attacked < 2 * baseline, (attacked, baseline)
    with psycopg.connect(**{**POSTGRES_SERVER, "dbname": postgres_env["_PREFIX"] + "involve_asia_db"}) as conn:
        stored = conn.execute(
            "SELECT count(*) FROM partner_conversions WHERE conversion_id LIKE %s AND NOT is_duplicate",
            [f"%-{run}-%"],
        ).fetchone()[0]
    assert stored == 200 + 3 * POSTBACKS
