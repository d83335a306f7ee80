"""The postback endpoint, end to end through Django, on SQLite and PostgreSQL partner databases."""

import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.db import connections
from django.test.utils import CaptureQueriesContext

from partners.services import partner_create
from tests.conftest import fixture_queries, partner_rows

SEED_INVOLVE = (
    "/partner/involve/event?sub_id=test123&media_id=media456&click_id=click789&usd_sale_amount=99.99"
    "&usd_payout=9.99&offer_name=Test&conversion_id=conv001&conversion_datetime=2025-01-15"
)
SEED_RECTOR = (
    "/partner/rector/event?media_id=media456&sub_id=test123&usd_sale_amount=99.99&usd_earning=9.99"
    "&offer_name=Test&conversion_id=conv002&conversion_datetime=2025-01-15&click_id=click789"
)


def assert_seed_row(row, conversion_id):
    assert row.conversion_id == conversion_id
    assert (row.sub_id, row.media_id, row.click_id) == ("test123", "media456", "click789")
    assert (row.usd_sale_amount, row.usd_earning) == (Decimal("99.99"), Decimal("9.99"))
    assert row.offer_name == "Test"
    assert row.conversion_datetime == datetime(2025, 1, 15, tzinfo=UTC)
    assert row.is_processed and not row.is_duplicate and row.processing_error is None


def test_seed_examples_land_in_each_partners_own_database(client, involve, rector):
    first = client.get(SEED_INVOLVE)
    second = client.get(SEED_RECTOR)

    assert first.status_code == 200 and first.json()["status"] == "success"
    assert second.status_code == 200 and second.json()["status"] == "success"
    assert_seed_row(partner_rows(involve).get(), "conv001")
    assert_seed_row(partner_rows(rector).get(), "conv002")
    # isolation: each row only in its own partner's database
    assert not partner_rows(involve).filter(conversion_id="conv002").exists()
    assert not partner_rows(rector).filter(conversion_id="conv001").exists()


def test_response_body_describes_partner_and_stored_conversion(client, involve):
    body = client.get(SEED_INVOLVE).json()
    assert body["partner"] == {"code": "involve_asia", "name": "InvolveAsia", "endpoint": "/involve/event"}
    assert body["conversion"]["conversion_id"] == "conv001"
    assert body["conversion"]["usd_earning"] == "9.99"
    assert body["conversion"]["conversion_datetime"] == "2025-01-15T00:00:00+00:00"
    assert isinstance(body["processing_time_ms"], float)


def test_repeat_is_a_duplicate_linked_to_the_original(client, involve):
    client.get(SEED_INVOLVE)
    repeat = client.get(SEED_INVOLVE)

    assert repeat.status_code == 200
    assert repeat.json()["status"] == "duplicate"
    original, duplicate = partner_rows(involve)
    assert not original.is_duplicate
    assert duplicate.is_duplicate and duplicate.duplicate_of_id == original.pk
    assert repeat.json()["conversion"]["duplicate_of"] == original.pk


def test_involve_asia_real_macros_fill_our_columns(client, involve):
    for query in fixture_queries("involve_asia", "conversion_created"):
        assert client.get(f"/partner/involve/event?{query}").json()["status"] == "success"
    first = partner_rows(involve).get(conversion_id="IA-778812345")
    assert (first.sub_id, first.media_id, first.click_id) == ("test123", "media456", "click789")
    assert first.usd_sale_amount == Decimal("93.47")
    assert first.usd_earning == Decimal("4.67")
    assert (first.offer_id, first.offer_name) == ("1021", "Shopee MY")
    assert first.conversion_datetime == datetime(2025, 1, 15, 13, 45, 10, tzinfo=UTC)
    assert (first.status, first.currency) == ("pending", "MYR")
    assert first.raw_data["order_id"] == "220915ABCDEF"
    second = partner_rows(involve).get(conversion_id="IA-778812346")
    assert second.usd_earning == Decimal("4.46")  # 4.455 rounded half-up


def test_rector_fixture(client, rector):
    for query in fixture_queries("rector"):
        assert client.get(f"/partner/rector/event?{query}").status_code == 200
    assert_seed_row(partner_rows(rector).get(), "conv002")


@pytest.mark.parametrize(
    ("query", "field", "message"),
    [
        ("usd_sale_amount=1", "conversion_id", "is required (send 'conversion_id')"),
        ("conversion_id=c&usd_sale_amount=abc", "usd_sale_amount", "usd_sale_amount: 'abc' is not a number"),
        ("conversion_id=c&usd_payout=NaN", "usd_earning", "usd_payout: 'NaN' is not a finite number"),
        (
            "conversion_id=c&usd_payout=100000000000000",
            "usd_earning",
            "usd_payout: '100000000000000' does not fit (largest is 9999999999999.99)",
        ),
        (
            "conversion_id=c&datetime_conversion=soon",
            "conversion_datetime",
            "datetime_conversion: 'soon' is not a date/time "
            "(use YYYY-MM-DD, YYYY-MM-DD HH:MM:SS, ISO 8601 or Unix seconds)",
        ),
        (f"conversion_id=c&aff_sub={'s' * 300}", "sub_id", "aff_sub: is 300 characters long; the limit is 255"),
        (f"conversion_id={'c' * 60}", "conversion_id", "conversion_id: is 60 characters long; the limit is 50"),
        ("conversion_id=c&aff_sub=a%00b", "sub_id", "aff_sub: contains a NUL character"),
        (
            "conversion_id=c&conversion_currency=EURO",
            "currency",
            "conversion_currency: 'EURO' is not an ISO 4217 currency code",
        ),
        (
            "conversion_id=c&conversion_currency=XYZ",
            "currency",
            "conversion_currency: 'XYZ' is not an ISO 4217 currency code",
        ),
        (
            "conversion_id=c&conversion_status=lost",
            "status",
            "conversion_status: 'lost' is not a known status (known: approved, paid, pending, rejected)",
        ),
    ],
)
def test_bad_input_is_400_naming_the_field_and_stored_as_rejected(client, involve, query, field, message):
    response = client.get(f"/partner/involve/event?{query}")

    assert response.status_code == 400
    body = response.json()
    assert body["status"] == "error"
    assert body["errors"] == {field: message}
    row = partner_rows(involve).get()
    assert row.processing_error == f"{field}: {message}"
    assert not row.is_processed and not row.is_duplicate
    assert row.raw_data == {key: value for key, value in (p.split("=", 1) for p in query.split("&"))} | (
        {"aff_sub": "a\ufffdb"} if "%00" in query else {}
    )


def test_rejected_row_keeps_the_valid_fields_and_does_not_block_a_corrected_retry(client, involve):
    client.get("/partner/involve/event?conversion_id=c9&aff_sub=s&usd_payout=oops")
    rejected = partner_rows(involve).get()
    assert (rejected.conversion_id, rejected.sub_id, rejected.usd_earning) == ("c9", "s", None)

    retry = client.get("/partner/involve/event?conversion_id=c9&aff_sub=s&usd_payout=1.5")
    assert retry.json()["status"] == "success"


def test_raw_data_keeps_every_parameter_including_repeats(client, involve):
    client.get("/partner/involve/event?conversion_id=c1&unknown=1&tag=a&tag=b&aff_sub=x")
    row = partner_rows(involve).get()
    assert row.raw_data == {"conversion_id": "c1", "unknown": "1", "tag": ["a", "b"], "aff_sub": "x"}


def test_post_form_body_merges_with_query_string(client, involve):
    response = client.post(
        "/partner/involve/event?conversion_id=p1",
        data="aff_sub=form-sub&usd_payout=2.5",
        content_type="application/x-www-form-urlencoded",
    )
    assert response.json()["status"] == "success"
    row = partner_rows(involve).get()
    assert (row.conversion_id, row.sub_id, row.usd_earning) == ("p1", "form-sub", Decimal("2.50"))


def test_post_json_object(client, involve):
    response = client.post(
        "/partner/involve/event",
        data=json.dumps({"conversion_id": "j1", "usd_payout": 3.333, "aff_sub": "js", "extra": {"nested": [1]}}),
        content_type="application/json",
    )
    assert response.json()["status"] == "success"
    row = partner_rows(involve).get()
    assert (row.sub_id, row.usd_earning) == ("js", Decimal("3.33"))
    assert row.raw_data["extra"] == {"nested": [1]}


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        ("{not json", "application/json", "is not valid JSON"),
        ('{"conversion_id": NaN}', "application/json", "is not valid JSON"),
        ("[1, 2]", "application/json", "must be a JSON object of parameter -> value"),
        (
            "<xml/>",
            "application/xml",
            "has unsupported Content-Type 'application/xml'; "
            "send application/x-www-form-urlencoded or application/json",
        ),
    ],
)
def test_unreadable_body_is_400_and_kept_verbatim(client, involve, body, content_type, message):
    response = client.post("/partner/involve/event?conversion_id=b1", data=body, content_type=content_type)
    assert response.status_code == 400
    assert response.json()["errors"]["body"] == message
    row = partner_rows(involve).get()
    assert row.raw_data["_raw_body"] == body
    assert row.conversion_id == "b1"


def test_unknown_endpoint_is_404_and_stores_nothing(client, involve):
    response = client.get("/partner/nobody/event?conversion_id=x")
    assert response.status_code == 404
    assert response.json() == {"status": "error", "message": "No active partner at endpoint '/nobody/event'"}
    assert not partner_rows(involve).exists()


def test_inactive_partner_is_404(client, make_partner):
    make_partner("paused", is_active=False)
    assert client.get("/partner/paused/event?conversion_id=x").status_code == 404


def test_endpoint_matches_with_trailing_slash(client, involve):
    assert client.get("/partner/involve/event/?conversion_id=t1").status_code == 200


def test_other_methods_are_405_with_allow(client, involve):
    response = client.put("/partner/involve/event?conversion_id=x")
    assert response.status_code == 405
    assert response["Allow"] == "GET, POST"
    assert response.json() == {"status": "error", "message": "Method PUT is not allowed; send GET or POST"}
    assert not partner_rows(involve).exists()


def test_headers_are_stored_with_secrets_masked(client, involve):
    client.get(
        "/partner/involve/event?conversion_id=h1",
        HTTP_AUTHORIZATION="Bearer abc",
        HTTP_COOKIE="session=xyz",
        HTTP_X_POSTBACK_TOKEN="s3cret",
        HTTP_X_API_KEY="k",
        HTTP_USER_AGENT="InvolveAsia-Postback/1.0",
    )
    headers = partner_rows(involve).get().request_headers
    assert headers["Authorization"] == "****"
    assert headers["Cookie"] == "****"
    assert headers["X-Postback-Token"] == "****"
    assert headers["User-Agent"] == "InvolveAsia-Postback/1.0"
    assert "abc" not in json.dumps(headers) and "s3cret" not in json.dumps(headers)


def test_request_ip_ignores_forwarded_for_without_trusted_proxies(client, involve):
    client.get("/partner/involve/event?conversion_id=i1", REMOTE_ADDR="203.0.113.9", HTTP_X_FORWARDED_FOR="1.2.3.4")
    assert partner_rows(involve).get().request_ip == "203.0.113.9"


def test_request_ip_uses_the_entry_added_by_the_trusted_proxy(client, involve, settings):
    settings.TRUSTED_PROXY_COUNT = 1
    client.get(
        "/partner/involve/event?conversion_id=i2",
        REMOTE_ADDR="10.0.0.1",
        HTTP_X_FORWARDED_FOR="6.6.6.6, 2001:db8::7",
    )
    assert partner_rows(involve).get().request_ip == "2001:db8::7"


def test_partner_added_after_start_up_works_without_restart(client, involve, make_partner):
    assert client.get(SEED_INVOLVE).status_code == 200  # the directory is now loaded
    assert client.get("/partner/late/event?conversion_id=l1").status_code == 404

    late = make_partner("late")
    response = client.get("/partner/late/event?conversion_id=l1")

    assert response.status_code == 200
    assert partner_rows(late).get().conversion_id == "l1"


def test_mapping_change_is_picked_up_after_the_cache_window(client, involve, settings):
    settings.PARTNER_CACHE_SECONDS = 0
    client.get("/partner/involve/event?conversion_id=m1&custom_sub=a")
    involve.parameter_mapping = {**involve.parameter_mapping, "sub_id": "custom_sub"}
    involve.save()
    client.get("/partner/involve/event?conversion_id=m2&custom_sub=b")
    assert partner_rows(involve).get(conversion_id="m1").sub_id is None
    assert partner_rows(involve).get(conversion_id="m2").sub_id == "b"


def test_hot_path_queries_no_configuration_and_one_partner_statement(client, involve):
    client.get("/partner/involve/event?conversion_id=warm")
    with (
        CaptureQueriesContext(connections["default"]) as default_queries,
        CaptureQueriesContext(connections[involve.database_alias]) as partner_queries,
    ):
        assert client.get("/partner/involve/event?conversion_id=q1").status_code == 200
    assert len(default_queries) == 0
    # far from the daily limit the quota is counted in batches: only the conversion's INSERT
    assert len(partner_queries) == 1
    # (on PostgreSQL the same statement reads the original when there is one)
    assert 'INSERT INTO "partner_conversions"' in partner_queries[0]["sql"]


def statement_kinds(queries) -> list[str]:
    """SELECT / INSERT / ... of each statement (a WITH ... INSERT is an INSERT)."""
    return ["INSERT" if " INSERT INTO " in query["sql"] else query["sql"].split(" ", 1)[0] for query in queries]


def test_a_repeat_of_a_conversion_stored_lately_is_one_statement(client, involve):
    assert client.get("/partner/involve/event?conversion_id=r1").json()["status"] == "success"
    with CaptureQueriesContext(connections[involve.database_alias]) as partner_queries:
        answer = client.get("/partner/involve/event?conversion_id=r1").json()
    assert answer["status"] == "duplicate"
    # The duplicate row, written only if the original still is as this process saw it.
    assert statement_kinds(partner_queries) == ["INSERT"]
    original = partner_rows(involve).get(conversion_id="r1", is_duplicate=False)
    assert answer["conversion"]["duplicate_of"] == original.pk
    duplicate = partner_rows(involve).get(pk=answer["conversion"]["id"])
    assert (duplicate.is_duplicate, duplicate.duplicate_of_id, duplicate.conversion_id) == (True, original.pk, "r1")


def test_a_repeat_decided_on_what_this_process_saw_is_decided_again_when_it_changed(client, involve):
    base = "/partner/involve/event?conversion_id=r2&usd_sale_amount=10"
    assert client.get(base).json()["status"] == "success"
    # Another process (or instance) approves it meanwhile.
    partner_rows(involve).filter(conversion_id="r2").update(status="approved", usd_earning=Decimal("1.50"))
    with CaptureQueriesContext(connections[involve.database_alias]) as partner_queries:
        answer = client.get(base).json()
    # The guarded INSERT wrote nothing; the original is read and the repeat decided on it.
    assert statement_kinds(partner_queries) == ["INSERT", "SELECT", "INSERT"]
    assert answer["status"] == "duplicate"
    assert partner_rows(involve).filter(conversion_id="r2").count() == 2
    # A repeat that differs from the original is never taken for a duplicate.
    changed = client.get(base.replace("usd_sale_amount=10", "usd_sale_amount=12") + "&conversion_status=paid").json()
    assert changed["status"] == "updated", changed
    assert partner_rows(involve).get(conversion_id="r2", is_duplicate=False).usd_sale_amount == Decimal("12.00")
    assert client.get(base.replace("usd_sale_amount=10", "usd_sale_amount=12")).json()["status"] == "duplicate"


def test_a_stale_hint_of_a_stored_conversion_still_records_the_original(client, involve):
    assert client.get("/partner/involve/event?conversion_id=gone").json()["status"] == "success"
    partner_rows(involve).all().delete()  # as a retention purge would
    assert client.get("/partner/involve/event?conversion_id=gone").json()["status"] == "success"
    assert client.get("/partner/involve/event?conversion_id=gone").json()["status"] == "duplicate"
    assert partner_rows(involve).filter(conversion_id="gone", is_duplicate=False).count() == 1


def test_partner_database_down_is_503_and_other_partners_still_work(client, involve, backend):
    url = (
        "postgres://root@127.0.0.1:1/unreachable"
        if backend == "postgres"
        else "sqlite:////nonexistent-dir/for/sure/down.sqlite3"
    )
    partner_create(
        partner_code="down",
        partner_name="Down",
        endpoint_path="/down/event",
        database_name="down_db",
        database_url=url,
    )
    response = client.get("/partner/down/event?conversion_id=d1")
    assert response.status_code == 503
    assert response["Retry-After"] == "30"
    assert response.json() == {
        "status": "error",
        "message": "The database of partner 'down' is unavailable; retry later",
    }
    assert client.get(SEED_INVOLVE).status_code == 200


def test_step_logs_when_the_partner_enables_logging(client, involve, caplog):
    caplog.set_level("INFO", logger="conversions.ingest")
    client.get(SEED_INVOLVE)
    records = [record.getMessage() for record in caplog.records if record.name == "conversions.ingest"]
    assert len(records) == 1  # one record per postback, one line per step
    lines = records[0].splitlines()
    assert lines[0] == "🚀 開始處理動態Partner Postback: endpoint_path=involve/event"
    assert lines[1:3] == ["🔍 步驟1: 查找Partner配置", "✅ 找到Partner: InvolveAsia (code: involve_asia)"]
    assert lines[3:6] == ["📊 步驟2: 收集原始數據", lines[4], "🔄 步驟3: 參數映射處理"]
    assert lines[4].startswith("📋 原始參數: {'sub_id': 'test123'")
    assert "  映射: sub_id -> sub_id = test123" in lines
    assert "  映射: usd_earning -> usd_payout = 9.99" in lines
    assert lines[-4:-1] == [
        "🔍 步驟4: 檢查重複轉化 (由數據庫唯一約束保證)",
        "💾 步驟5: 創建轉化記錄",
        "✅ 步驟6: 標記為已處理",
    ]
    assert lines[-1].startswith(
        "🎉 Partner Postback處理完成: partner=InvolveAsia, conversion_id=conv001, outcome=success"
    )
    assert lines[-1].endswith("ms")


def test_a_rejected_postbacks_step_log_ends_with_the_refusal(client, involve, caplog):
    caplog.set_level("INFO", logger="conversions.ingest")
    assert client.get("/partner/involve/event?conversion_id=bad1&usd_payout=abc").status_code == 400
    lines = [r.getMessage() for r in caplog.records if r.name == "conversions.ingest"][0].splitlines()
    assert not any(line.startswith("🎉") for line in lines)
    assert lines[-1].startswith(
        "❌ Partner Postback已拒絕 (數據無效): partner=InvolveAsia, conversion_id=bad1, outcome=error"
    )


def test_one_summary_line_when_logging_is_off(client, make_partner, caplog):
    make_partner("involve_asia", enable_logging=False)
    caplog.set_level("INFO", logger="conversions.ingest")
    client.get(SEED_INVOLVE)
    messages = [record.getMessage() for record in caplog.records if record.name == "conversions.ingest"]
    assert len(messages) == 1
    assert messages[0].startswith("postback partner=involve_asia outcome=success conversion_id=conv001 time=")


@pytest.mark.direct_postgres
@pytest.mark.parametrize("backend", ["postgres"])
@pytest.mark.parametrize("prepared", [True, False], ids=["prepared", "not-prepared"])
def test_postback_statements_on_postgres_are_prepared_once_per_connection(
    client, settings, make_partner, backend, prepared
):
    # DB_PREPARED_STATEMENTS=false: the same statements, bound server-side, never prepared
    settings.DATABASE_OPTIONS = {**settings.DATABASE_OPTIONS, "prepared_statements": prepared}
    partner = make_partner("involve")
    for number in range(3):
        assert client.get(f"/partner/involve/event?conversion_id=p{number}").json()["status"] == "success"
    approved = client.get("/partner/involve/event?conversion_id=p0&status=approved")
    assert approved.json()["status"] == "updated"
    with connections[partner.database_alias].cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements")
        statements = [row[0] for row in cursor.fetchall()]
    inserts = [sql for sql in statements if sql.startswith('INSERT INTO "partner_conversions"')]
    assert len(inserts) == (1 if prepared else 0)
    assert partner_rows(partner).filter(status="approved").count() == 1


def test_query_string_is_read_exactly_as_django_reads_request_get(client, involve):
    from django.http import QueryDict

    query = "conversion_id=Q1&a=1&a=2&b=x+y&c=%E2%82%AC&d=%FF&e=&f"
    assert client.get(f"/partner/involve/event?{query}").json()["status"] == "success"
    expected = {key: values[0] if len(values) == 1 else values for key, values in QueryDict(query).lists()}
    assert partner_rows(involve).get().raw_data == expected
    assert expected["a"] == ["1", "2"] and expected["b"] == "x y" and expected["c"] == "€"


def test_what_this_process_saw_of_an_original_is_its_values(client, involve):
    from conversions.ingest.decide import LIFECYCLE_FIELDS
    from conversions.ingest.store import _recently_stored

    query = fixture_queries("involve_asia", "conversion_created")[0]
    assert client.get(f"/partner/involve/event?{query}").json()["status"] == "success"
    original = partner_rows(involve).get(is_duplicate=False)
    seen = _recently_stored.get(involve.database_alias, (involve.database_alias, involve.pk, original.conversion_id))
    expected = {name: getattr(original, name) for name in (*LIFECYCLE_FIELDS, "pk")}
    assert {name: getattr(seen, name) for name in expected} == expected
    assert all(value is not None for value in expected.values())
    assert seen.request_digests == ()  # not kept; read with the original when a change needs them
    # and a repeat of it is the one guarded statement
    with CaptureQueriesContext(connections[involve.database_alias]) as partner_queries:
        assert client.get(f"/partner/involve/event?{query}").json()["status"] == "duplicate"
    assert len(partner_queries) == 1
