"""The README's promises against a real gunicorn: the embedded SQLite default and PostgreSQL."""

import sqlite3
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from tests.conftest import POSTGRES_SERVER, postgres_drop
from tests.e2e.server import fetch, manage, running_server, service_env

pytestmark = pytest.mark.e2e

SEED_INVOLVE = (
    "/partner/involve/event?sub_id=test123&media_id=media456&click_id=click789&usd_sale_amount=99.99"
    "&usd_payout=9.99&offer_name=Test&conversion_id=conv001&conversion_datetime=2025-01-15"
)
SEED_RECTOR = (
    "/partner/rector/event?media_id=media456&sub_id=test123&usd_sale_amount=99.99&usd_earning=9.99"
    "&offer_name=Test&conversion_id=conv002&conversion_datetime=2025-01-15&click_id=click789"
)
SEED_COLUMNS = (
    "conversion_id, sub_id, media_id, click_id, usd_sale_amount, usd_earning, offer_name, conversion_datetime"
)


def check_seed_examples(base: str) -> None:
    status, body = fetch(base + SEED_INVOLVE)
    assert (status, body["status"]) == (200, "success"), body
    status, body = fetch(base + SEED_RECTOR)
    assert (status, body["status"]) == (200, "success"), body
    status, body = fetch(base + SEED_INVOLVE)
    assert (status, body["status"]) == (200, "duplicate"), body


def fire(base: str, paths: list[str], workers: int = 16) -> list[tuple[int, dict]]:
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda path: fetch(base + path), paths))


def test_embedded_sqlite_default(tmp_path):
    env = service_env(
        DATABASE_URL=f"sqlite:///{tmp_path}/default.sqlite3",
        PARTNER_DATABASE_URL=f"sqlite:///{tmp_path}/{{name}}.sqlite3",
    )
    init = manage(env, "init_partners")
    assert init.returncode == 0, init.stderr
    again = manage(env, "init_partners")
    assert again.stdout.count("left unchanged") == 2 and again.stdout.count("schema up to date") == 3
    log = tmp_path / "server.log"
    with running_server(env, log) as base:
        check_seed_examples(base)
        # concurrent writers: 2 workers x 4 threads, new conversions and duplicates mixed
        paths = [f"/partner/rector/event?conversion_id=w{i % 100}&sub_id={i}" for i in range(300)]
        results = fire(base, paths)
        assert Counter(status for status, _ in results) == {200: 300}
        assert Counter(body["status"] for _, body in results) == {"success": 100, "duplicate": 200}
    assert "database is locked" not in log.read_text()

    involve = sqlite3.connect(tmp_path / "involve_asia_db.sqlite3")
    rector = sqlite3.connect(tmp_path / "rector_db.sqlite3")
    row = involve.execute(f"SELECT {SEED_COLUMNS} FROM partner_conversions WHERE is_duplicate = 0").fetchall()
    assert row == [("conv001", "test123", "media456", "click789", 99.99, 9.99, "Test", "2025-01-15 00:00:00")]
    assert involve.execute("SELECT count(*) FROM partner_conversions WHERE conversion_id='conv002'").fetchone() == (0,)
    assert rector.execute("SELECT count(*) FROM partner_conversions WHERE conversion_id='conv001'").fetchone() == (0,)
    assert rector.execute("SELECT count(*) FROM partner_conversions WHERE is_duplicate=0").fetchone() == (101,)


@pytest.fixture
def postgres_names():
    token = uuid.uuid4().hex[:8]
    prefix = f"test_pb_e2e_{token}_"
    yield prefix
    postgres_drop(prefix)


def test_postgres_init_partners_creates_databases_and_new_partner_needs_no_restart(tmp_path, postgres_names):
    env = service_env(
        DATABASE_URL=f"postgres://root@127.0.0.1:5432/{postgres_names}default",
        PARTNER_DATABASE_URL=f"postgres://root@127.0.0.1:5432/{postgres_names}{{name}}",
        PARTNER_DATABASE_TEMPLATE=f"{postgres_names}template",
    )
    init = manage(env, "init_partners")
    assert init.returncode == 0, init.stderr
    assert "default: database created" in init.stdout
    assert manage(env, "init_partners").stdout.count("left unchanged") == 2

    with running_server(env, tmp_path / "server.log") as base:
        check_seed_examples(base)
        added = manage(
            env,
            "shell",
            "-c",
            "from partners.services import partner_create, partner_provision;"
            "p = partner_create(partner_code='late', partner_name='Late', endpoint_path='/late/event',"
            " database_name='late_db', parameter_mapping={'sub_id': 'subid'});"
            "print(partner_provision(partner=p).describe())",
        )
        assert added.returncode == 0, added.stderr
        # enough requests that both workers serve some of them
        results = fire(base, [f"/partner/late/event?conversion_id=l{i}&subid=s{i}" for i in range(40)])
        assert Counter(body["status"] for _, body in results) == {"success": 40}

    def count(database: str, where: str) -> int:
        with psycopg.connect(**{**POSTGRES_SERVER, "dbname": postgres_names + database}) as conn:
            return conn.execute(f"SELECT count(*) FROM partner_conversions WHERE {where}").fetchone()[0]

    assert count("involve_asia_db", "conversion_id = 'conv001' AND NOT is_duplicate AND sub_id = 'test123'") == 1
    assert count("involve_asia_db", "conversion_id = 'conv002'") == 0
    assert count("rector_db", "conversion_id = 'conv002' AND usd_earning = 9.99") == 1
    assert count("late_db", "sub_id LIKE 's%'") == 40


def test_log_level_and_log_file(tmp_path):
    env = service_env(
        DATABASE_URL=f"sqlite:///{tmp_path}/default.sqlite3",
        PARTNER_DATABASE_URL=f"sqlite:///{tmp_path}/{{name}}.sqlite3",
        LOG_FILE=str(tmp_path / "logs" / "postback.log"),
    )
    assert manage(env, "init_partners").returncode == 0
    with running_server(env, tmp_path / "server.log") as base:
        fetch(base + SEED_INVOLVE)
    written = (tmp_path / "logs" / "postback.log").read_text()
    assert "🚀 開始處理動態Partner Postback: endpoint_path=involve/event" in written
    assert "🎉 Partner Postback處理完成: partner=InvolveAsia, conversion_id=conv001" in written

    quiet = {**env, "LOG_LEVEL": "WARNING", "LOG_FILE": str(tmp_path / "quiet.log")}
    with running_server(quiet, tmp_path / "server-quiet.log") as base:
        fetch(base + SEED_RECTOR)
    assert "Partner Postback" not in (tmp_path / "quiet.log").read_text()
