"""`import_legacy`: the previous service's history, laid out as tests/fixtures/legacy/*.sql
create it, imported into our partners' storage as originals."""

import datetime
import io
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from django.core.management import CommandError, call_command
from django.db import connections
from psycopg import sql

from conversions.models import PartnerConversion
from publishers.models import Delivery, Publisher
from publishers.selectors import publisher_directory
from publishers.services import publisher_save
from tests.conftest import FIXTURES_DIR, POSTGRES_SERVER, partner_rows
from tests.e2e.server import PROJECT_DIR, service_env

LAYOUTS = FIXTURES_DIR / "legacy"
UTC = datetime.UTC


class LegacyDatabase:
    """A fresh PostgreSQL database laid out as the previous service's."""

    def __init__(self) -> None:
        self.name = f"test_pb_legacy_{uuid.uuid4().hex[:12]}"
        self.url = f"postgres://root@127.0.0.1:5432/{self.name}"
        with psycopg.connect(**POSTGRES_SERVER, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.name)))

    def load(self, *layouts: str) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            for layout in layouts:
                conn.execute((LAYOUTS / f"{layout}.sql").read_text())

    def insert(self, table: str, rows: list[dict[str, Any]]) -> None:
        with psycopg.connect(self.url) as conn:
            for row in rows:
                values = [json.dumps(v) if isinstance(v, (dict, list)) else v for v in row.values()]
                conn.execute(
                    sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
                        sql.Identifier(table),
                        sql.SQL(", ").join(sql.Identifier(name) for name in row),
                        sql.SQL(", ").join(sql.Placeholder() * len(row)),
                    ),
                    values,
                )

    def drop(self) -> None:
        with psycopg.connect(**POSTGRES_SERVER, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(self.name)))


@pytest.fixture
def legacy() -> Iterator[LegacyDatabase]:
    database = LegacyDatabase()
    yield database
    database.drop()


def import_legacy(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("import_legacy", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


RECEIVED = datetime.datetime(2025, 11, 3, 8, 15, 30, tzinfo=UTC)


def involve_params(conversion_id: str, **extra: str) -> dict[str, str]:
    """An InvolveAsia postback as the previous service received it (and as it is sent again)."""
    return {
        "conversion_id": conversion_id,
        "aff_sub": "RPID42",
        "aff_sub2": "media-7",
        "offer_id": "OF9",
        "offer_name": "Shopee ID - CPS",
        "usd_sale_amount": "123.45",
        "usd_payout": "10.00",
        "datetime_conversion": "2025-11-03 15:10:00",
        "conversion_status": "pending",
        **extra,
    }


def involve_row(conversion_id: str, partner_id: int = 1, **fields: Any) -> dict[str, Any]:
    params = involve_params(conversion_id)
    return {
        "partner_id": partner_id,
        "conversion_id": conversion_id,
        "offer_id": "OF9",
        "offer_name": "Shopee ID - CPS",
        "conversion_datetime": datetime.datetime(2025, 11, 3, 8, 10, tzinfo=UTC),
        "usd_sale_amount": Decimal("123.45"),
        "usd_earning": Decimal("10.00"),
        "media_id": "media-7",
        "sub_id": "RPID42",
        "is_processed": True,
        "raw_data": params,
        "request_headers": {"User-Agent": "InvolveAsia", "Authorization": "Bearer abc"},
        "request_ip": "203.0.113.9",
        "received_at": RECEIVED,
        **fields,
    }


def seed_partner_conversions(legacy: LegacyDatabase) -> None:
    """Three previous partners (two of them ours), their originals, a duplicate, a rejected
    postback and a row with a value our pipeline refuses."""
    legacy.load("partners", "partner_conversions")
    legacy.insert(
        "partners",
        [
            {"partner_code": "involve_asia", "partner_name": "InvolveAsia", "endpoint_path": "/involve/event"},
            {"partner_code": "rector", "partner_name": "Rector", "endpoint_path": "/rector/event"},
            {"partner_code": "acesstrade", "partner_name": "AccessTrade", "endpoint_path": "/acesstrade/event"},
        ],
    )
    legacy.insert(
        "partner_conversions",
        [
            involve_row("C-1"),
            involve_row("C-2", received_at=RECEIVED + datetime.timedelta(minutes=1)),
            involve_row("C-1", is_duplicate=True, received_at=RECEIVED + datetime.timedelta(minutes=2)),
            involve_row("C-3", processing_error="usd_sale_amount: not a number"),
            involve_row("C-4", offer_name="x" * 1001),
            {**involve_row("C-5"), "conversion_id": "   "},
            {
                "partner_id": 2,
                "conversion_id": "R-1",
                "usd_sale_amount": Decimal("5.00"),
                "raw_data": {"conversion_id": "R-1", "sub_id": "s1"},
                "received_at": RECEIVED,
            },
            {"partner_id": 3, "conversion_id": "A-1", "received_at": RECEIVED},
            {"partner_id": 3, "conversion_id": "A-2", "received_at": RECEIVED},
        ],
    )


def make_publisher(partner) -> Publisher:
    publisher = Publisher(
        code="rampup",
        name="RAMPUP",
        match_regex="^(RAMPUP|RPID.*)",
        url_template="https://publisher.example/pb?click={click_id}&sub={sub_id}",
        events=["recorded", "approved", "rejected", "paid"],
        payout_kind="percent_sale",
        payout_value=Decimal("1"),
    )
    publisher.full_clean()
    publisher.save()
    publisher.partners.set([partner])
    publisher_save(publisher=publisher)
    publisher_directory.clear()
    return publisher


def deliveries(partner) -> list[Delivery]:
    return list(Delivery.objects.using(partner.database_alias).order_by("id"))


def test_partner_conversions_import_as_originals_once(legacy, make_partner, client):
    involve = make_partner("involve_asia")
    rector = make_partner("rector")
    make_publisher(involve)
    seed_partner_conversions(legacy)

    out, err = import_legacy("--from-url", legacy.url, "--batch-size", "2")

    involve_stored = list(partner_rows(involve))
    assert [row.conversion_id for row in involve_stored] == ["C-1", "C-2"]
    first = involve_stored[0]
    assert first.outcome.value == "original" and first.is_processed and first.imported_at is not None
    assert first.received_at == RECEIVED
    assert (first.sub_id, first.media_id, first.offer_id) == ("RPID42", "media-7", "OF9")
    assert (first.usd_sale_amount, first.usd_earning) == (Decimal("123.45"), Decimal("10.00"))
    assert first.conversion_datetime == datetime.datetime(2025, 11, 3, 8, 10, tzinfo=UTC)
    # What the columns did not keep, read from the raw parameters by the partner's mapping.
    assert (first.status, first.status_raw) == ("pending", "pending")
    assert first.raw_data == involve_params("C-1")
    assert first.request_headers["Authorization"] == "****"
    assert first.request_ip == "203.0.113.9"
    assert [(row.conversion_id, row.usd_sale_amount) for row in partner_rows(rector)] == [("R-1", Decimal("5.00"))]

    assert "involve_asia: read 6, imported 2, already present 0, skipped 4" in out
    assert "2 invalid values" in out
    assert "1 marked duplicate by the previous service" in out
    assert "1 rejected by the previous service (processing_error)" in out
    assert "rector: read 1, imported 1, already present 0, skipped 0" in out
    assert "previous partner partner_id=3: 2 row(s) skipped, no partner of ours matches it" in out
    # Progress per batch, and each invalid row told.
    assert err.count("row(s) read") == 5
    assert "skipped partner_conversions id 5: offer_name: is 1001 characters long; the limit is 1000" in err
    assert "conversion_id: must not be empty" in err
    # Publishers were not told.
    assert deliveries(involve) == []

    out, _err = import_legacy("--from-url", legacy.url)
    assert "involve_asia: read 6, imported 0, already present 2, skipped 4" in out
    assert "rector: read 1, imported 0, already present 1" in out
    assert partner_rows(involve).count() == 2

    # On cut-over day the network sends one of them again: a duplicate, forwarded to no one.
    response = client.get("/partner/involve/event", involve_params("C-1"))
    assert response.status_code == 200
    assert response.json()["status"] == "duplicate"
    assert deliveries(involve) == []
    assert partner_rows(involve).filter(conversion_id="C-1", is_duplicate=False).count() == 1


def test_a_conversion_already_received_here_stays_the_original(legacy, make_partner, client):
    involve = make_partner("involve_asia")
    response = client.get("/partner/involve/event", involve_params("C-1", usd_sale_amount="200.00"))
    assert response.json()["status"] == "success"
    seed_partner_conversions(legacy)

    out, _err = import_legacy("--from-url", legacy.url)

    assert "involve_asia: read 6, imported 1, already present 1" in out
    originals = partner_rows(involve).filter(conversion_id="C-1")
    assert [(row.usd_sale_amount, row.imported_at) for row in originals] == [(Decimal("200.00"), None)]
    assert partner_rows(involve).get(conversion_id="C-2").imported_at is not None


def test_announce_queues_deliveries_as_for_a_new_original(legacy, make_partner):
    involve = make_partner("involve_asia")
    make_partner("rector")
    make_publisher(involve)
    seed_partner_conversions(legacy)

    out, _err = import_legacy("--from-url", legacy.url, "--announce")

    queued = deliveries(involve)
    assert sorted(d.conversion.conversion_id for d in queued) == ["C-1", "C-2"]
    assert {(d.event, d.source) for d in queued} == {("recorded", "import")}
    assert queued[0].url == "https://publisher.example/pb?click=&sub=RPID42"
    assert "involve_asia: read 6, imported 2, already present 0, skipped 4 (" in out
    assert "announced to publishers 2" in out

    # Announced once: a second run finds them present and queues nothing more.
    import_legacy("--from-url", legacy.url, "--announce")
    assert len(deliveries(involve)) == 2


def test_dry_run_reads_and_maps_and_writes_nothing(legacy, make_partner, client):
    involve = make_partner("involve_asia")
    make_partner("rector")
    client.get("/partner/involve/event", involve_params("C-2"))
    seed_partner_conversions(legacy)

    out, _err = import_legacy("--from-url", legacy.url, "--dry-run")

    assert "involve_asia: read 6, would import 1, already present 1, skipped 4" in out
    assert "rector: read 1, would import 1" in out
    assert out.strip().endswith("dry run: nothing was written")
    assert [row.conversion_id for row in partner_rows(involve)] == ["C-2"]


def test_conversions_with_event_time_and_a_partners_table(legacy, make_partner, client):
    involve = make_partner("involve_asia")
    legacy.load("partners", "conversions_event_time")
    legacy.insert(
        "partners", [{"partner_code": "involve_asia", "partner_name": "I", "endpoint_path": "/involve/event"}]
    )
    legacy.insert(
        "conversions",
        [
            {
                "conversion_id": "E-1",
                "offer_name": "Offer",
                "usd_sale_amount": Decimal("50.00"),
                "usd_payout": Decimal("4.00"),
                "aff_sub": "RPID7",
                "event_time": datetime.datetime(2025, 10, 1, 12, 0, tzinfo=UTC),
                "raw_data": involve_params("E-1", usd_sale_amount="50.00", usd_payout="4.00", aff_sub="RPID7"),
                "partner_id": 1,
                "created_at": RECEIVED,
            },
            {"conversion_id": "E-9", "partner_id": 9, "created_at": RECEIVED},
        ],
    )

    out, _err = import_legacy("--from-url", legacy.url)

    (row,) = partner_rows(involve)
    assert (row.conversion_id, row.sub_id, row.usd_sale_amount, row.usd_earning) == (
        "E-1",
        "RPID7",
        Decimal("50.00"),
        Decimal("4.00"),
    )
    assert row.conversion_datetime == datetime.datetime(2025, 10, 1, 12, 0, tzinfo=UTC)
    assert row.received_at == RECEIVED and row.imported_at is not None
    assert "tables read: conversions; 2 row(s)" in out
    assert "previous partner partner_id=9: 1 row(s) skipped" in out
    params = involve_params("E-1", usd_sale_amount="50.00", usd_payout="4.00", aff_sub="RPID7")
    assert client.get("/partner/involve/event", params).json()["status"] == "duplicate"


def test_conversions_with_datetime_conversion_and_no_partners_table(legacy, make_partner):
    involve = make_partner("involve_asia", timezone="Asia/Jakarta")
    legacy.load("conversions_datetime_conversion")
    rows = [
        {
            "conversion_id": "D-1",
            "usd_sale_amount": Decimal("9.99"),
            "usd_payout": Decimal("1.00"),
            "aff_sub": "s-1",
            "datetime_conversion": "2025-09-30 23:30:00",
            "raw_parameters": {"conversion_id": "D-1", "conversion_status": "approved"},
            "tenant_id": "involve",
            "created_at": RECEIVED,
        },
        {"conversion_id": "D-2", "datetime_conversion": "yesterday", "tenant_id": "involve", "created_at": RECEIVED},
        {"conversion_id": "D-1", "tenant_id": "involve", "created_at": RECEIVED + datetime.timedelta(hours=1)},
    ]
    legacy.insert("conversions", rows)

    # It does not say whose rows these are: the operator must.
    with pytest.raises(CommandError, match="name the partner with --partner CODE") as raised:
        import_legacy("--from-url", legacy.url)
    assert raised.value.returncode == 2

    out, err = import_legacy("--from-url", legacy.url, "--partner", "involve_asia")

    (row,) = partner_rows(involve)
    # Naive text is the partner's local time (Asia/Jakarta), as for a postback.
    assert row.conversion_datetime == datetime.datetime(2025, 9, 30, 16, 30, tzinfo=UTC)
    assert (row.status, row.sub_id, row.raw_data["conversion_status"]) == ("approved", "s-1", "approved")
    assert "involve_asia: read 3, imported 1, already present 1, skipped 1 (1 invalid values)" in out
    assert "conversion_id 'D-2': datetime_conversion: 'yesterday' is not a date/time" in err

    # Several previous partners in one table: which of them goes to ours is never guessed.
    legacy.insert("conversions", [{"conversion_id": "X-1", "tenant_id": "digenesia", "created_at": RECEIVED}])
    with pytest.raises(CommandError, match=r"more than one previous partner \(tenant_id: .*choose") as raised:
        import_legacy("--from-url", legacy.url, "--partner", "involve_asia")
    assert raised.value.returncode == 2
    out, _err = import_legacy("--from-url", legacy.url, "--partner", "involve_asia", "--source-partner", "digenesia")
    assert "involve_asia: read 1, imported 1" in out
    assert sorted(row.conversion_id for row in partner_rows(involve)) == ["D-1", "X-1"]


def test_both_tables_in_one_database(legacy, make_partner):
    involve = make_partner("involve_asia")
    seed_partner_conversions(legacy)
    legacy.load("conversions_event_time")
    legacy.insert("conversions", [{"conversion_id": "C-1", "partner_id": 1}, {"conversion_id": "E-2", "partner_id": 1}])

    out, _err = import_legacy("--from-url", legacy.url)

    assert "tables read: partner_conversions, conversions; 11 row(s)" in out
    assert "involve_asia: read 8, imported 3, already present 1" in out
    assert sorted(row.conversion_id for row in partner_rows(involve)) == ["C-1", "C-2", "E-2"]


def run_manage(*args: str) -> subprocess.CompletedProcess:
    default = connections["default"].settings_dict
    env = {**service_env(), "DATABASE_URL": f"postgres://root@127.0.0.1:5432/{default['NAME']}"}
    return subprocess.run(
        [sys.executable, "manage.py", "import_legacy", *args],
        cwd=PROJECT_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("mysql://root@127.0.0.1/old", "is not a PostgreSQL URL"),
        ("postgres://root:s3cret@127.0.0.1:1/old", "cannot connect to the previous service's database"),
        ("postgres://root@127.0.0.1:5432/test_pb_legacy_absent", "cannot connect"),
        ("postgres://root@127.0.0.1:5432/postgres", "has neither a partner_conversions nor a conversions table"),
    ],
)
def test_a_source_that_cannot_be_read_is_one_line_and_exit_2(live_db, url, said):
    result = run_manage("--from-url", url)

    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and said in lines[0], result.stderr
    assert "Traceback" not in result.stderr and "s3cret" not in result.stderr
    assert result.stdout == ""


def test_imported_rows_are_marked_and_received_ones_are_not(legacy, make_partner, client):
    involve = make_partner("involve_asia")
    client.get("/partner/involve/event", involve_params("N-1"))
    seed_partner_conversions(legacy)
    import_legacy("--from-url", legacy.url)
    marked = dict(PartnerConversion.objects.using(involve.database_alias).values_list("conversion_id", "imported_at"))
    assert marked["N-1"] is None and marked["C-1"] is not None and marked["C-2"] == marked["C-1"]
