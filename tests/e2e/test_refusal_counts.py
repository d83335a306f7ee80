"""A server's workers keep their refusal counts in batches: stopping the server writes them."""

import psycopg
import pytest

from tests.conftest import POSTGRES_SERVER
from tests.e2e.server import fetch, running_server

pytestmark = pytest.mark.e2e


def test_a_stopped_server_has_written_every_refusal_it_counted(postgres_env, tmp_path):
    env = {**postgres_env, "QUOTA_FLUSH_SECONDS": "600"}  # no flush by the workers' threads
    with running_server(env, tmp_path / "server.log") as base:
        for n in range(6):
            status, body = fetch(f"{base}/partner/involve/event?conversion_id=bad-{n}&usd_sale_amount=lots")
            assert (status, body["status"]) == (400, "error")
    # The server is stopped (SIGTERM): each worker wrote its pending counts as it exited.
    with psycopg.connect(**{**POSTGRES_SERVER, "dbname": env["_PREFIX"] + "involve_asia_db"}) as conn:
        counts = dict(conn.execute("SELECT name, count FROM postback_daily_counters").fetchall())
        rejected = conn.execute("SELECT count(*) FROM partner_conversions WHERE processing_error IS NOT NULL")
        stored = rejected.fetchone()[0]
    assert stored == 6
    assert counts == {"rejected:invalid_data": 6}
