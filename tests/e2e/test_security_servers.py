"""The daily quota and partner authentication held across two real gunicorn servers
(separate processes, two ports) sharing one PostgreSQL, with and without Redis."""

import urllib.error
import urllib.request
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
import redis

from tests.conftest import POSTGRES_SERVER, postgres_drop
from tests.e2e.server import fetch, manage, running_server, service_env

pytestmark = pytest.mark.e2e

SECRET = "e2e-partner-secret-0123456789"
QUOTA = 30


@pytest.fixture
def postgres_prefix():
    prefix = f"test_pb_e2e_{uuid.uuid4().hex[:8]}_"
    yield prefix
    postgres_drop(prefix)


@pytest.mark.parametrize("store", ["database", "redis"])
def test_quota_and_secret_hold_across_two_servers(tmp_path, postgres_prefix, store):
    extra = {}
    if store == "redis":
        extra = {"REDIS_URL": "redis://127.0.0.1:6379/0", "REDIS_KEY_PREFIX": f"test-e2e-{uuid.uuid4().hex[:8]}"}
    env = service_env(
        DATABASE_URL=f"postgres://root@127.0.0.1:5432/{postgres_prefix}default",
        PARTNER_DATABASE_URL=f"postgres://root@127.0.0.1:5432/{postgres_prefix}{{name}}",
        PARTNER_DATABASE_TEMPLATE=f"{postgres_prefix}template",
        **extra,
    )
    init = manage(env, "init_partners")
    assert init.returncode == 0, init.stderr
    configured = manage(
        env,
        "shell",
        "-c",
        "from partners.models import Partner;"
        f"Partner.objects.filter(partner_code='rector').update(max_daily_requests={QUOTA}, postback_secret='{SECRET}')",
    )
    assert configured.returncode == 0, configured.stderr

    log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"
    try:
        with running_server(env, log_a, threads=2) as server_a, running_server(env, log_b, threads=2) as server_b:
            assert server_a != server_b
            denied = fetch(server_a + "/partner/rector/event?conversion_id=nope")
            assert denied[0] == 403 and denied[1]["reason"] == "token_missing"
            urls = [
                f"{(server_a, server_b)[i % 2]}/partner/rector/event?conversion_id=c{i}&token={SECRET}"
                for i in range(2 * QUOTA)
            ]
            with ThreadPoolExecutor(12) as pool:
                results = list(pool.map(fetch, urls))
            # the other partner is not affected by rector's quota
            assert fetch(server_b + "/partner/involve/event?conversion_id=i1")[0] == 200
            over = urllib.request.Request(f"{server_a}/partner/rector/event?conversion_id=x&token={SECRET}")
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(over, timeout=30)
            assert refused.value.code == 429 and 0 < int(refused.value.headers["Retry-After"]) <= 86400
            too_big = fetch(server_b + "/partner/involve/event", data=b"a=" + b"x" * 70000)
            assert too_big[0] == 413 and too_big[1]["reason"] == "body_too_large"
    finally:
        if extra:
            client = redis.Redis.from_url(extra["REDIS_URL"])
            for key in client.scan_iter(extra["REDIS_KEY_PREFIX"] + ":*"):
                client.delete(key)

    assert Counter(status for status, _ in results) == {200: QUOTA, 429: QUOTA}
    # both servers accepted some and refused some: the counter really is shared
    for offset in (0, 1):
        assert {status for status, _ in results[offset::2]} == {200, 429}
    logs = log_a.read_text() + log_b.read_text()
    assert logs.count("daily quota exceeded partner=rector") == 1
    assert SECRET not in logs

    with psycopg.connect(**{**POSTGRES_SERVER, "dbname": postgres_prefix + "rector_db"}) as conn:
        stored = conn.execute("SELECT count(*) FROM partner_conversions").fetchone()[0]
        raw = conn.execute("SELECT string_agg(raw_data::text, '') FROM partner_conversions").fetchone()[0]
        refused = dict(
            conn.execute("SELECT name, count FROM postback_daily_counters WHERE name LIKE 'rejected:%%'").fetchall()
        )
    assert stored == QUOTA
    assert SECRET not in raw
    assert refused == {"rejected:token_missing": 1, "rejected:quota_exceeded": QUOTA + 1}
