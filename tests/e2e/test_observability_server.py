"""Metrics summed over gunicorn workers, and JSON logs, from a real server."""

import json
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from tests.e2e.server import fetch, manage, running_server, service_env

pytestmark = pytest.mark.e2e


def scrape(base: str, token: str) -> str:
    request = urllib.request.Request(base + "/metrics", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        return response.read().decode()


def value(text: str, line_start: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_start))


def test_metrics_sum_every_worker_and_logs_are_json(postgres_env, tmp_path):
    metrics_dir = tmp_path / "prom"
    env = {
        **postgres_env,
        "METRICS_TOKEN": "scrape-me",
        "LOG_FORMAT": "json",
        "GOOGLE_CLOUD_PROJECT": "acme",
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
    }
    log = tmp_path / "server.log"
    with running_server(env, log, workers=2, threads=4) as base:
        urls = [f"{base}/partner/involve/event?conversion_id=m{i % 40}" for i in range(120)]
        with ThreadPoolExecutor(8) as pool:
            assert {status for status, _ in pool.map(fetch, urls)} == {200}
        status, _ = fetch(base + "/partner/involve/event?usd_payout=x")
        assert status == 400
        text = scrape(base, "scrape-me")
        assert fetch(base + "/metrics")[0] == 401
        pids = {path.name.split("_")[-1] for path in metrics_dir.glob("counter_*.db")}
    assert value(text, 'postback_requests_total{outcome="success",partner="involve_asia"}') == 40
    assert value(text, 'postback_requests_total{outcome="duplicate",partner="involve_asia"}') == 80
    assert value(text, 'postback_requests_total{outcome="invalid",partner="involve_asia"}') == 1
    assert value(text, 'postback_request_duration_seconds_count{partner="involve_asia"}') == 121
    # persistent connections: at most one per worker thread, not one per request
    assert 1 <= value(text, 'postback_database_connections_opened_total{alias="involve_asia_db"}') <= 8
    assert len(pids) >= 2, "both workers should have answered some postbacks"

    text_log = log.read_text()
    assert "Logging error" not in text_log
    assert "Booting worker with pid" in text_log  # gunicorn's own lines still format
    records = []
    for line in text_log.splitlines():
        if line.startswith("{"):
            records.append(json.loads(line))
    requests = [r for r in records if r["logger"] == "postback_site.request" and "partner" in r]
    assert len(requests) == 121
    assert {r["outcome"] for r in requests} == {"success", "duplicate", "invalid"}
    assert all(r["severity"] == "INFO" and r["httpRequest"]["status"] in (200, 400) for r in requests)


def test_owned_metrics_directory_is_removed_on_exit(tmp_path):
    env = service_env(
        DATABASE_URL=f"sqlite:///{tmp_path}/default.sqlite3",
        PARTNER_DATABASE_URL=f"sqlite:///{tmp_path}/{{name}}.sqlite3",
        METRICS_ALLOWED_IPS="127.0.0.1",
        TMPDIR=str(tmp_path / "tmp"),
    )
    (tmp_path / "tmp").mkdir()
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    assert manage(env, "init_partners").returncode == 0
    with running_server(env, tmp_path / "server.log") as base:
        fetch(base + "/partner/rector/event?conversion_id=x1")
        with urllib.request.urlopen(base + "/metrics", timeout=10) as response:
            text = response.read().decode()
        assert 'postback_requests_total{outcome="success",partner="rector"} 1.0' in text
        directories = [
            line for line in (tmp_path / "server.log").read_text().splitlines() if "postback-metrics-" in line
        ]
    assert directories == []


def test_every_worker_counts_in_the_connection_limit_before_it_serves_anything(tmp_path):
    env = service_env(
        DATABASE_URL=f"sqlite:///{tmp_path}/default.sqlite3",
        PARTNER_DATABASE_URL=f"sqlite:///{tmp_path}/{{name}}.sqlite3",
        METRICS_TOKEN="scrape-me",
        DB_MAX_CONNECTIONS="6",
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "prom"),
    )
    (tmp_path / "prom").mkdir()
    assert manage(env, "init_partners").returncode == 0
    with running_server(env, tmp_path / "server.log", workers=2, threads=4):
        # Read from the workers' files, without a request that a worker would count itself in.
        deadline = time.monotonic() + 10
        while (limit := connections_limit(tmp_path / "prom")) != 12 and time.monotonic() < deadline:
            time.sleep(0.1)
    assert limit == 12  # 2 workers x DB_MAX_CONNECTIONS, though at most one has served a request


def connections_limit(directory) -> float:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))
    return registry.get_sample_value("postback_database_connections_limit") or 0.0


def test_a_per_database_limit_serves_postbacks_and_the_connection_metrics_show_the_bound(postgres_env, tmp_path):
    env = {
        **postgres_env,
        "DB_POOL_MAX_SIZE": "1",
        "DB_MAX_CONNECTIONS": "6",
        "METRICS_TOKEN": "scrape-me",
        # Four threads share the worker's one connection to the database: each waits its
        # turn, as long as the machine needs (the default half second is for a database that
        # hangs; on a busy machine it turned a queue of four into a 503 now and then).
        "DB_BUSY_WAIT_SECONDS": "60",
    }
    log = tmp_path / "server.log"
    with running_server(env, log, workers=2, threads=4) as base:
        urls = [f"{base}/partner/rector/event?conversion_id=p{i}" for i in range(80)]
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(fetch, urls))
        failed = [(status, body) for status, body in answers if body.get("status") != "success"]
        problems = [line for line in log.read_text().splitlines() if "ERROR" in line or "rror:" in line]
        assert failed == [], (failed, problems[-20:])
        text = scrape(base, "scrape-me")
    # one connection per worker to the partner database, reused for every postback
    assert 1 <= value(text, 'postback_database_connections_opened_total{alias="rector_db"}') <= 2
    assert value(text, "postback_database_connections_limit") == 12  # 2 workers x DB_MAX_CONNECTIONS
    assert 1 <= value(text, "postback_database_connections_peak") <= 12
    assert value(text, 'postback_database_connections{state="open"}') <= 12


def test_an_instance_serves_only_its_partners(postgres_env, tmp_path):
    env = {**postgres_env, "POSTBACK_PARTNERS": "rector"}
    with running_server(env, tmp_path / "server.log") as base:
        assert fetch(base + "/partner/rector/event?conversion_id=only1")[0] == 200
        status, body = fetch(base + "/partner/involve/event?conversion_id=only1")
        assert (status, body["message"]) == (404, "No active partner at endpoint '/involve/event'")
        status, body = fetch(base + "/health")
        assert (status, body["databases"]) == (200, {"default": "ok", "rector_db": "ok"})
        assert [partner["code"] for partner in fetch(base + "/info")[1]["partners"]] == ["rector"]
