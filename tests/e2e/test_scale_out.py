"""Scale-out and failure promises against real gunicorn processes and PostgreSQL.

Two instances on one database never store two originals of a conversion; a worker
killed mid-load loses no conversion that was answered 200; a partner whose database
hangs gets fast 503s while another partner is still served.
"""

import http.client
import os
import signal
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest

from tests.conftest import POSTGRES_SERVER
from tests.e2e.server import HangingDatabase, fetch, manage, running_server

pytestmark = pytest.mark.e2e


def originals(env: dict, database: str) -> Counter:
    with psycopg.connect(**{**POSTGRES_SERVER, "dbname": env["_PREFIX"] + database}) as conn:
        rows = conn.execute(
            "SELECT conversion_id FROM partner_conversions WHERE NOT is_duplicate AND processing_error IS NULL"
        ).fetchall()
    return Counter(conversion_id for (conversion_id,) in rows)


def get(url: str) -> tuple[int, dict]:
    try:
        return fetch(url)
    except (OSError, http.client.HTTPException) as exc:
        # A killed worker drops its connections, possibly mid-response: not an answer.
        return 0, {"error": str(exc)}


def test_two_instances_store_exactly_one_original_per_conversion(postgres_env, tmp_path):
    env = postgres_env
    with (
        running_server(env, tmp_path / "a.log") as first,
        running_server(env, tmp_path / "b.log") as second,
    ):
        ids = [f"so-{i}" for i in range(150)]
        # every conversion is sent twice to each instance, interleaved, 16 at a time
        urls = [
            f"{base}/partner/involve/event?conversion_id={cid}&aff_sub=s" for cid in ids for base in (first, second)
        ]
        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(get, urls * 2))
    assert Counter(status for status, _ in results) == {200: 600}
    success = Counter(body["conversion"]["conversion_id"] for _, body in results if body["status"] == "success")
    assert success == Counter(ids)
    assert originals(env, "involve_asia_db") == Counter(ids)


def gunicorn_workers(port: int, count: int) -> list[int]:
    """The `count` workers of the gunicorn on `port`, once all are forked (the first one
    may answer while the others are still starting)."""
    deadline = time.monotonic() + 30
    while len(workers := gunicorn_pids(port)[1]) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return workers


def gunicorn_pids(port: int) -> tuple[int, list[int]]:
    """(master, workers) of the gunicorn listening on `port`, found through /proc."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"gunicorn" in cmdline and f"PORT={port}".encode() in environ:
            pids.append(int(entry.name))
    parents = {pid: int((Path("/proc") / str(pid) / "stat").read_text().split(")")[1].split()[1]) for pid in pids}
    master = next(pid for pid, parent in parents.items() if parent not in parents)
    return master, [pid for pid, parent in parents.items() if parent == master]


def test_sigkill_of_a_worker_mid_load_loses_no_answered_conversion(postgres_env, tmp_path):
    env = postgres_env
    with running_server(env, tmp_path / "server.log") as base:
        workers = gunicorn_workers(int(base.rsplit(":", 1)[1]), 2)
        assert len(workers) == 2
        answered = []
        killed = threading.Event()

        def send(index: int) -> tuple[int, dict]:
            if index == 150:
                os.kill(workers[0], signal.SIGKILL)
                killed.set()
            result = get(f"{base}/partner/rector/event?conversion_id=k-{index}&sub_id=s")
            answered.append(killed.is_set())
            return result

        with ThreadPoolExecutor(12) as pool:
            results = list(pool.map(send, range(500)))
    succeeded = [body["conversion"]["conversion_id"] for status, body in results if status == 200]
    assert succeeded, "no request was answered"
    assert len(succeeded) == len(set(succeeded))
    stored = originals(env, "rector_db")
    assert all(stored[cid] == 1 for cid in succeeded), "a conversion answered 200 is missing"
    assert set(stored) <= {f"k-{i}" for i in range(500)}
    # the load went on after the kill: the surviving and respawned workers answered
    assert sum(1 for status, _ in results[200:] if status == 200) > 200


def timed(url: str) -> tuple[int, dict, float]:
    started = time.monotonic()
    status, body = get(url)
    return status, body, time.monotonic() - started


def test_a_hanging_partner_database_gets_fast_503s_while_others_are_served(postgres_env, tmp_path):
    env = {**postgres_env, "DB_CONNECT_TIMEOUT": "2"}
    hanging = HangingDatabase()
    try:
        added = manage(
            env,
            "shell",
            "-c",
            "from partners.services import partner_create;"
            "partner_create(partner_code='stuck', partner_name='Stuck', endpoint_path='/stuck/event',"
            f" database_name='stuck_db', database_url='postgres://root@127.0.0.1:{hanging.port}/stuck')",
        )
        assert added.returncode == 0, added.stderr
        with running_server(env, tmp_path / "server.log") as base, ThreadPoolExecutor(32) as pool:
            # fewer than one worker's threads, so no worker is entirely held by the stuck database
            stuck = [pool.submit(timed, f"{base}/partner/stuck/event?conversion_id=h{i}") for i in range(3)]
            time.sleep(0.3)
            served = [pool.submit(timed, f"{base}/partner/involve/event?conversion_id=ok{i}") for i in range(20)]
            served = [future.result() for future in served]
            stuck = [future.result() for future in stuck]
            # a second wave, while the database still hangs
            again = list(pool.map(timed, [f"{base}/partner/stuck/event?conversion_id=h2-{i}" for i in range(10)]))
            health = fetch(base + "/health")
    finally:
        hanging.close()
    assert [(status, body["status"]) for status, body, _ in served] == [(200, "success")] * 20
    # the other partner was answered while the stuck partner's requests were still waiting
    assert max(seconds for _, _, seconds in served) < min(seconds for _, _, seconds in stuck)
    for status, body, seconds in stuck + again:
        assert status == 503
        assert body["message"] == "The database of partner 'stuck' is unavailable; retry later"
        assert seconds < 10
    # one partner's database hanging is that partner's problem: the service still serves the other
    assert health[0] == 200 and health[1]["status"] == "degraded" and health[1]["failing"] == ["stuck_db"]
    assert originals(postgres_env, "involve_asia_db") == Counter(f"ok{i}" for i in range(20))
