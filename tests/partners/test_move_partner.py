"""`move_partner`: a partner's data moved online between PostgreSQL locations (a schema of
the run's shared database, a database of its own), its postbacks stored throughout.

What is checked is what is stored: every row of every partner table, with its id, at the
target; the source left as it was and refusing writes; each postback answered once and
stored once, at the location the partner has when it lands.
"""

import datetime
import io
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import psycopg
import pytest
from django.conf import settings as django_settings
from django.core.management import CommandError, call_command
from django.db import connections
from django.test import Client
from psycopg import sql

from conversions.ingest.refusals import refusal_ledger
from conversions.models import DailyCounter
from infra.databases.moves import STORAGE_MOVED_SQLSTATE, StorageMove, partner_tables, storage_location
from partners.models import Partner
from publishers.models import Delivery, DeliveryAttempt
from reconciliation.models import ReconciliationRow, ReconciliationRun, ReportUpload
from tests.conftest import POSTGRES_SERVER, run_concurrently

POSTGRES_ONLY = pytest.mark.parametrize("backend", ["postgres"], indirect=True)
PROJECT_DIR = Path(__file__).resolve().parents[2]


def _move(code: str, url: str) -> str:
    out = io.StringIO()
    call_command("move_partner", code, "--to-url", url, stdout=out)
    return out.getvalue()


def _fenced_at(output: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(re.search(r"fence installed at (\S+):", output).group(1))


def _connect(url: str) -> tuple[psycopg.Connection, str]:
    """A connection to the location's database as the login role, and its schema."""
    location = storage_location(url)
    connection = psycopg.connect(**{**POSTGRES_SERVER, "dbname": location.config["NAME"]}, autocommit=True)
    return connection, location.schema or "public"


def _snapshot(url: str) -> dict[str, list[tuple[int, str]]]:
    """Every partner table at `url`: (id, the whole row as text), in id order."""
    connection, schema = _connect(url)
    with connection:
        return {
            table.name: connection.execute(
                sql.SQL("SELECT id, t::text FROM {} t ORDER BY id").format(sql.Identifier(schema, table.name))
            ).fetchall()
            for table in partner_tables()
        }


def _query(url: str, statement: str, params: list | None = None, table: str = "partner_conversions") -> list[tuple]:
    """`statement` at `url`, its {table} the location's `table`."""
    connection, schema = _connect(url)
    with connection:
        cursor = connection.execute(sql.SQL(statement).format(table=sql.Identifier(schema, table)), params)
        return cursor.fetchall() if cursor.description else []


def _insert_fails_with_the_fence(url: str) -> None:
    with pytest.raises(psycopg.Error) as refused:
        _query(
            url,
            "INSERT INTO {table} (partner_id, conversion_id, raw_data, request_headers, request_digests, "
            "is_processed, is_duplicate, received_at, created_at, updated_at) "
            "VALUES (1, 'forged', '{{}}', '{{}}', '[]', false, false, now(), now(), now()) RETURNING id",
        )
    assert refused.value.sqlstate == STORAGE_MOVED_SQLSTATE
    assert "partner storage moved" in str(refused.value)


def _post(client: Client, partner: Partner, conversion_id: str, **params: str) -> dict:
    query = "&".join(f"{name}={value}" for name, value in {"conversion_id": conversion_id, **params}.items())
    response = client.get(f"/partner{partner.endpoint_path}?{query}")
    return {"http": response.status_code, **response.json()}


def _rows_of_every_table(client: Client, partner: Partner) -> None:
    """Postbacks (originals, a duplicate, a status change, a rejected one) and one row of
    each other partner table, so a move has something in every table to carry."""
    for n in range(20):
        assert _post(client, partner, f"a-{n}", conversion_status="pending")["status"] == "success"
    assert _post(client, partner, "a-0", conversion_status="pending")["status"] == "duplicate"
    assert _post(client, partner, "a-1", conversion_status="approved")["status"] == "updated"
    assert _post(client, partner, "a-bad", usd_sale_amount="lots")["http"] == 400
    alias = partner.database_alias
    partner_id = partner.pk
    conversion_id = _query(partner.database_url, "SELECT min(id) FROM {table}")[0][0]
    delivery = Delivery.objects.using(alias).create(
        conversion_id=conversion_id,
        partner_id=partner_id,
        publisher_id=1,
        event="recorded",
        idempotency_key=uuid.uuid4().hex,
        url="https://publisher.example/postback",
    )
    DeliveryAttempt.objects.using(alias).create(
        delivery=delivery, number=1, started_at=datetime.datetime.now(datetime.UTC), status_code=200
    )
    run = ReconciliationRun.objects.using(alias).create(
        partner_id=partner_id, date_from=datetime.date(2026, 1, 1), date_to=datetime.date(2026, 1, 7)
    )
    ReconciliationRow.objects.using(alias).create(run=run, conversion_id="a-3", kind="matched", rank=5)
    ReportUpload.objects.using(alias).create(run=run, seq=0, data=b"conversion_id\na-3\n")  # a queued run's report
    DailyCounter.objects.using(alias).create(partner_id=partner_id, day=datetime.date(2026, 1, 1), name="test", count=3)
    connections[alias].close()
    refusal_ledger.flush()  # the rejected postback's count, written in the background otherwise


@POSTGRES_ONLY
def test_a_partner_moves_from_a_schema_to_its_own_database_and_back(make_partner, database_pool, settings):
    settings.PARTNER_DATABASE_URL = database_pool.shared_url()
    first = database_pool.url("postgres", "move_a_src")
    partner = make_partner("involve_asia", database_name="move_a_db", database_url=first)
    client = Client()
    _rows_of_every_table(client, partner)
    before = _snapshot(first)
    assert all(before.values()), {table: len(rows) for table, rows in before.items()}

    own = database_pool.database_url("move_a_own")
    output = _move("involve_asia", own)

    assert _snapshot(own) == before  # every row, with its id
    assert _snapshot(first) == before  # the source intact
    for table, rows in before.items():
        assert re.search(rf"^  {table} +{len(rows):>12,} +{len(rows):>12,}$", output, re.M), output
    assert 'DROP SCHEMA "move_a_src" CASCADE' in output
    _insert_fails_with_the_fence(first)
    partner.refresh_from_db()
    assert partner.database_url == own
    assert _post(client, partner, "a-3", conversion_status="pending")["status"] == "duplicate"
    assert _post(client, partner, "a-new", conversion_status="pending")["status"] == "success"
    assert _query(own, "SELECT count(*) FROM {table} WHERE conversion_id IN ('a-3', 'a-new')") == [(3,)]
    assert _query(first, "SELECT count(*) FROM {table} WHERE conversion_id = 'a-new'") == [(0,)]

    # Back into a schema: the shared PARTNER_DATABASE_URL means the partner's own schema in it,
    # and that is where the template puts it, so it keeps no URL of its own.
    moved = _snapshot(own)
    output = _move("involve_asia", database_pool.shared_url())
    partner.refresh_from_db()
    assert partner.database_url == ""
    back = database_pool.url("postgres", "move_a_db")
    assert _snapshot(back) == moved
    assert "DROP DATABASE" in output
    _insert_fails_with_the_fence(own)
    assert _post(client, partner, "a-new", conversion_status="pending")["status"] == "duplicate"
    assert _post(client, partner, "a-newer", conversion_status="pending")["status"] == "success"
    assert _query(back, "SELECT count(*) FROM {table} WHERE conversion_id LIKE 'a-new%%'") == [(3,)]
    # Ids go on past the copied ones.
    assert _query(
        back, "SELECT min(id) > %s FROM {table} WHERE conversion_id = 'a-newer'", [moved["partner_conversions"][-1][0]]
    ) == [(True,)]


@POSTGRES_ONLY
def test_changes_of_every_kind_made_during_the_copy_reach_the_target(make_partner, database_pool, monkeypatch):
    """While the bulk copy runs the service goes on: a status change, a retention purge and
    the purged conversion sent again (a new original of the same conversion_id), a
    delivery sent (a table without updated_at), a reconciliation's rows truncated. The
    target ends as the source is."""
    source = database_pool.url("postgres", "move_e_src")
    partner = make_partner("involve_asia", database_name="move_e_db", database_url=source)
    client = Client()
    _rows_of_every_table(client, partner)
    bulk_copy = StorageMove.bulk_copy

    def bulk_copy_then_the_service_goes_on(move: StorageMove) -> int:
        copied = bulk_copy(move)
        assert _post(client, partner, "a-2", conversion_status="approved")["status"] == "updated"
        _query(source, "DELETE FROM {table} WHERE conversion_id = 'a-5'")
        assert _post(client, partner, "a-5", conversion_status="pending")["status"] == "success"
        assert _post(client, partner, "e-new", conversion_status="pending")["status"] == "success"
        _query(source, "UPDATE {table} SET state = 'delivered', attempts = 1", table="publisher_deliveries")
        _query(source, "TRUNCATE {table}", table="reconciliation_rows")
        return copied

    monkeypatch.setattr(StorageMove, "bulk_copy", bulk_copy_then_the_service_goes_on)
    target = database_pool.url("postgres", "move_e_dst")
    output = _move("involve_asia", target)

    assert _snapshot(target) == _snapshot(source)
    assert re.search(r"caught up [1-9]\d* rows changed during the copy", output), output
    assert _query(target, "SELECT status FROM {table} WHERE conversion_id = 'a-2' AND NOT is_duplicate") == [
        ("approved",)
    ]
    assert _query(target, "SELECT count(*) FROM {table} WHERE conversion_id IN ('a-5', 'e-new')") == [(2,)]
    assert _query(target, "SELECT state FROM {table}", table="publisher_deliveries") == [("delivered",)]
    assert _query(target, "SELECT count(*) FROM {table}", table="reconciliation_rows") == [(0,)]


SEEDED = 10_000
POSTERS = 16
UPDATES_PER_POSTER = (SEEDED // 2) // POSTERS


def _seed(url: str, count: int) -> None:
    """`count` pending originals seed-0.. cloned, at the source, from one stored by a postback."""
    from conversions.models import PartnerConversion

    columns = [field.column for field in PartnerConversion._meta.concrete_fields if field.column != "id"]
    values = [sql.SQL("'seed-' || g") if column == "conversion_id" else sql.Identifier(column) for column in columns]
    connection, schema = _connect(url)
    table = sql.Identifier(schema, "partner_conversions")
    with connection:
        connection.execute(
            sql.SQL(
                "INSERT INTO {table} ({columns}) SELECT {values} FROM {table}, generate_series(0, %s) g "
                "WHERE conversion_id = 'template'"
            ).format(
                table=table,
                columns=sql.SQL(", ").join(map(sql.Identifier, columns)),
                values=sql.SQL(", ").join(values),
            ),
            [count - 1],
        )


@POSTGRES_ONLY
def test_postbacks_sent_during_a_move_are_each_stored_once_at_the_new_location(make_partner, database_pool):
    source = database_pool.url("postgres", "move_b_src")
    partner = make_partner("involve_asia", database_name="move_b_db", database_url=source)
    assert _post(Client(), partner, "template", conversion_status="pending")["status"] == "success"
    _seed(source, SEEDED)
    target = database_pool.url("postgres", "move_b_dst")
    moving, moved = threading.Event(), threading.Event()
    output: list[str] = []

    def post_until_moved(index: int) -> list[tuple[str, str, dict, int, bool]]:
        """(kind, conversion_id, the answer, 503s before it, sent after the switch) for each postback."""
        client = Client()
        sent = []
        moving.wait()
        n, after = 0, 0
        while after < 10:
            kind = ("new", "repeat", "update")[n % 3]
            if kind == "update" and n // 3 >= UPDATES_PER_POSTER:
                kind = "new"  # this poster's seeded conversions are all approved
            after_switch = moved.is_set()
            if kind == "new":
                conversion_id, params = f"b-{index}-{n}", {"conversion_status": "pending"}
            elif kind == "repeat":  # stored before the move: a duplicate wherever it lands
                conversion_id, params = f"seed-{(index * 601 + n) % (SEEDED // 2)}", {"conversion_status": "pending"}
            else:  # each seeded conversion approved once: the change must reach the target
                seeded = SEEDED // 2 + index * UPDATES_PER_POSTER + n // 3
                conversion_id, params = f"seed-{seeded}", {"conversion_status": "approved"}
            unavailable = 0
            while (answer := _post(client, partner, conversion_id, **params))["http"] == 503:
                unavailable += 1  # the switch window: the sender retries
                time.sleep(0.05)
            sent.append((kind, conversion_id, answer, unavailable, after_switch))
            n += 1
            after += after_switch
        return sent

    def move_or_post(index: int):
        if index < POSTERS:
            return post_until_moved(index)
        moving.set()
        time.sleep(0.3)  # the posters are under way
        try:
            output.append(_move("involve_asia", target))
        finally:
            moved.set()

    results = run_concurrently(move_or_post, POSTERS + 1)
    failures = [result for result in results if isinstance(result, BaseException)]
    assert not failures, failures
    fenced_at = _fenced_at(output[0])
    sent = [postback for result in results[:POSTERS] for postback in result]
    assert re.search(r"caught up [1-9][\d,]* rows changed during the copy", output[0]), output[0]
    assert {(kind, after) for kind, *_, after in sent} == {
        (k, a) for k in ("new", "repeat", "update") for a in (False, True)
    }
    unexpected = [(kind, cid, answer) for kind, cid, answer, *_ in sent if answer["http"] != 200]
    assert not unexpected, unexpected[:5]
    expected = {"new": "success", "repeat": "duplicate", "update": "updated"}
    wrong = [(kind, cid, answer["status"]) for kind, cid, answer, *_ in sent if answer["status"] != expected[kind]]
    assert not wrong, wrong[:5]

    new = [cid for kind, cid, *_ in sent if kind == "new"]
    stored = dict(
        _query(target, "SELECT conversion_id, count(*) FROM {table} WHERE conversion_id LIKE 'b-%%' GROUP BY 1")
    )
    assert stored == dict.fromkeys(new, 1)
    updated = [cid for kind, cid, *_ in sent if kind == "update"]
    approved = _query(
        target, "SELECT conversion_id FROM {table} WHERE conversion_id = ANY(%s) AND status = 'approved'", [updated]
    )
    assert sorted(row[0] for row in approved) == sorted(updated)
    # Every row the source has is at the target; nothing reached the source after the fence.
    source_ids = {row[0] for row in _query(source, "SELECT id FROM {table}")}
    assert source_ids <= {row[0] for row in _query(target, "SELECT id FROM {table}")}
    assert _query(source, "SELECT count(*) FROM {table} WHERE received_at > %s", [fenced_at]) == [(0,)]
    assert len(source_ids) > SEEDED
    assert _post(Client(), partner, "b-after", conversion_status="pending")["status"] == "success"
    assert len({row[0] for row in _query(source, "SELECT id FROM {table}")}) == len(source_ids)
    retried = sum(unavailable for *_, unavailable, _ in sent)
    print(f"{len(sent)} postbacks during the move, {retried} answered 503 first (the switch window)")


@POSTGRES_ONLY
def test_what_move_partner_refuses(make_partner, database_pool):
    source = database_pool.url("postgres", "move_c_src")
    partner = make_partner("involve_asia", database_name="move_c_db", database_url=source)
    rector = make_partner(
        "rector", database_name="move_c_rector", database_url=database_pool.url("postgres", "move_c_r")
    )
    # A schema with rows that no partner uses any more.
    leftover = database_pool.url("postgres", "move_c_left")
    gone = make_partner("gone", database_name="move_c_gone", database_url=leftover)
    assert _post(Client(), gone, "kept")["status"] == "success"
    Partner.objects.filter(pk=gone.pk).delete()

    same_place = f"postgresql://root@127.0.0.1/{storage_location(source).config['NAME']}?schema=move_c_src"
    refusals = {
        source: "is already stored at",
        same_place: "is already stored at",
        "postgres://root@127.0.0.1:1/nowhere": "cannot reach",
        rector.database_url: "is where partner rector is stored",
        leftover: r"is not empty: partner_conversions hold rows",
        f"sqlite:///{database_pool.tmp_dir}/move_c.sqlite3": "moves PostgreSQL storage only",
    }
    for url, message in refusals.items():
        with pytest.raises(CommandError, match=message):
            _move("involve_asia", url)
    with pytest.raises(CommandError, match="no partner with code 'nobody'"):
        _move("nobody", database_pool.url("postgres", "move_c_none"))
    partner.refresh_from_db()
    assert partner.database_url == source
    assert _post(Client(), partner, "still-here")["status"] == "success"  # nothing fenced


@POSTGRES_ONLY
def test_a_move_that_fails_behind_the_fence_is_undone_and_can_be_run_again(make_partner, database_pool, monkeypatch):
    source = database_pool.url("postgres", "move_f_src")
    partner = make_partner("involve_asia", database_name="move_f_db", database_url=source)
    client = Client()
    assert _post(client, partner, "f-1", conversion_status="pending")["status"] == "success"
    target = database_pool.url("postgres", "move_f_dst")

    def server_gone(move: StorageMove) -> None:
        raise psycopg.OperationalError("server closed the connection unexpectedly")

    with monkeypatch.context() as patched:
        patched.setattr(StorageMove, "sequences_align", server_gone)
        with pytest.raises(CommandError, match="failed .*server closed.*the partner stays where it was, the source"):
            _move("involve_asia", target)
    partner.refresh_from_db()
    assert partner.database_url == source
    assert _post(client, partner, "f-2", conversion_status="pending")["status"] == "success"  # unfenced
    assert _query(target, "SELECT count(*) FROM {table}") == [(0,)]

    _move("involve_asia", target)
    assert _query(target, "SELECT conversion_id FROM {table} ORDER BY id") == [("f-1",), ("f-2",)]


@POSTGRES_ONLY
def test_an_instance_that_still_has_the_old_location_stores_at_the_new_one(make_partner, database_pool, settings):
    """move_partner in a process of its own: this one keeps its cached partner (and alias)
    at the old location; the fence sends its postbacks to the new one."""
    settings.PARTNER_CACHE_SECONDS = 3600
    source = database_pool.url("postgres", "move_d_src")
    partner = make_partner("involve_asia", database_name="move_d_db", database_url=source)
    client = Client()
    assert _post(client, partner, "d-1", conversion_status="pending")["status"] == "success"
    target = database_pool.url("postgres", "move_d_dst")
    default = connections["default"].settings_dict
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://{default['USER']}@{default['HOST']}:{default['PORT']}/{default['NAME']}",
        "PARTNER_DATABASE_URL": django_settings.PARTNER_DATABASE_URL,
        "PARTNER_DATABASE_TEMPLATE": django_settings.PARTNER_DATABASE_TEMPLATE,
    }
    command = [sys.executable, "manage.py", "move_partner", "involve_asia", "--to-url", target]
    moved = subprocess.run(command, cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=120)
    assert moved.returncode == 0, moved.stdout + moved.stderr
    assert _post(client, partner, "d-1", conversion_status="pending")["status"] == "duplicate"
    assert _post(client, partner, "d-2", conversion_status="pending")["status"] == "success"
    assert _query(target, "SELECT count(*) FROM {table}") == [(3,)]
    assert _query(source, "SELECT count(*) FROM {table}") == [(1,)]
