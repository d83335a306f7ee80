"""The read API (/partner/<endpoint>/conversions and /stats) on SQLite and PostgreSQL partner databases."""

import csv
import io
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from urllib.parse import parse_qs, urlsplit

import pytest
from django.contrib.auth.models import Permission, User
from django.http import StreamingHttpResponse
from django.test import Client
from rest_framework.authtoken.models import Token

from conversions.exports import EXPORT_COLUMNS
from conversions.models import PartnerConversion
from conversions.selectors import CONVERSION_COLUMNS, ConversionFilters, conversion_export_rows, conversion_queryset
from infra.databases import partner_database_unregister
from partners.services import partner_create
from tests.conftest import partner_rows

CONVERSIONS = "/partner/involve/event/conversions"
STATS = "/partner/involve/event/stats"
BASE = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def reader(live_db) -> User:
    user = User.objects.create_user("analyst", password="not-used")
    user.user_permissions.add(
        Permission.objects.get(content_type__app_label="conversions", codename="view_partnerconversion")
    )
    return user


@pytest.fixture
def api(client, reader):
    """A test client sending the analyst's API token."""
    client.defaults["HTTP_AUTHORIZATION"] = f"Token {Token.objects.create(user=reader).key}"
    return client


def add(partner, **fields) -> PartnerConversion:
    fields.setdefault("conversion_id", f"c{PartnerConversion.objects.using(partner.database_alias).count()}")
    fields.setdefault("is_processed", not fields.get("is_duplicate") and not fields.get("processing_error"))
    return PartnerConversion.objects.using(partner.database_alias).create(partner_id=partner.pk, **fields)


def ids(response) -> list[str]:
    assert response.status_code == 200, response.content
    return [row["conversion_id"] for row in response.json()["results"]]


# --- authentication and permission ------------------------------------------------


@pytest.mark.parametrize("url", [CONVERSIONS, STATS])
def test_no_credentials_is_401_json_with_the_token_scheme(client, involve, url):
    response = client.get(url)
    assert response.status_code == 401
    assert response["Content-Type"] == "application/json"
    assert response["WWW-Authenticate"] == "Token"
    assert "credentials were not provided" in response.json()["detail"]


def test_unknown_token_is_401(client, involve):
    response = client.get(CONVERSIONS, HTTP_AUTHORIZATION="Token 0123456789abcdef0123456789abcdef01234567")
    assert response.status_code == 401
    assert response.json()["detail"].startswith("Invalid token. Send an API token")


@pytest.mark.parametrize("url", [CONVERSIONS, STATS])
def test_user_without_the_view_permission_is_403(client, involve, url):
    user = User.objects.create_user("sales", password="not-used")
    response = client.get(url, HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    assert response.status_code == 403
    assert response.json()["detail"] == (
        "You do not have the permission to view conversions (conversions.view_partnerconversion)."
    )


@pytest.mark.parametrize("url", [CONVERSIONS, STATS])
def test_token_with_the_view_permission_is_200(api, involve, url):
    add(involve, received_at=BASE)
    response = api.get(url)
    assert response.status_code == 200
    assert response.json()["partner"] == {"code": "involve_asia", "name": "InvolveAsia", "endpoint": "/involve/event"}


def test_admin_session_works_and_a_session_without_permission_does_not(client, involve):
    staff = User.objects.create_user("staff", password="not-used", is_staff=True)
    client.force_login(staff)
    assert client.get(CONVERSIONS).status_code == 403
    admin = User.objects.create_superuser("root", password="not-used")
    client.force_login(admin)
    assert client.get(CONVERSIONS).status_code == 200


def test_permission_through_a_group(client, involve):
    from django.contrib.auth.models import Group

    group = Group.objects.create(name="analysts")
    group.permissions.add(Permission.objects.get(codename="view_partnerconversion"))
    user = User.objects.create_user("g", password="not-used")
    user.groups.add(group)
    response = client.get(CONVERSIONS, HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    assert response.status_code == 200


@pytest.mark.parametrize("url", ["/partner/nobody/conversions", "/partner/nobody/event/stats"])
def test_unknown_partner_is_a_json_404(api, involve, url):
    response = api.get(url)
    assert response.status_code == 404
    assert response.json()["detail"].startswith("No active partner at endpoint '/nobody")


def test_unauthenticated_caller_cannot_probe_which_partners_exist(client, involve):
    assert client.get("/partner/nobody/conversions").status_code == 401


def test_postback_route_still_serves_other_endpoints(client, involve):
    assert client.get("/partner/involve/event?conversion_id=p1").json()["status"] == "success"


# --- listing and filters ------------------------------------------------------------

ROWS = [
    # received_at offset (hours), fields
    (0, {"conversion_id": "a", "offer_id": "10", "offer_name": "Shopee", "sub_id": "s1", "media_id": "m1",
         "click_id": "k1", "status": "approved", "usd_sale_amount": Decimal("10.00"), "usd_earning": Decimal("1.00")}),
    (5, {"conversion_id": "b", "offer_id": "20", "offer_name": "Lazada", "sub_id": "s2", "media_id": "m1",
         "click_id": "k2", "status": "pending", "usd_sale_amount": Decimal("20.50"), "usd_earning": Decimal("2.05")}),
    (26, {"conversion_id": "c", "offer_id": "10", "offer_name": "Shopee", "sub_id": "s1", "media_id": "m2",
          "click_id": "k3", "status": "approved", "usd_sale_amount": Decimal("30.25"), "usd_earning": Decimal("3.02")}),
    (27, {"conversion_id": "a", "offer_id": "10", "offer_name": "Shopee", "sub_id": "s1", "media_id": "m1",
          "click_id": "k1", "status": "approved", "is_duplicate": True}),
    (30, {"conversion_id": "", "sub_id": "s3", "processing_error": "conversion_id: is required"}),
    (49, {"conversion_id": "d", "offer_id": "30", "offer_name": "Agoda", "sub_id": "s2", "media_id": "m3",
          "click_id": "k4", "status": "rejected", "usd_sale_amount": Decimal("5.00"), "usd_earning": Decimal("0.50")}),
]  # fmt: skip


@pytest.fixture
def listed(involve):
    """ROWS stored in the involve database; conversion_datetime is 3 days before receipt."""
    for hours, fields in ROWS:
        received = BASE + timedelta(hours=hours)
        add(involve, received_at=received, conversion_datetime=received - timedelta(days=3), **fields)
    return involve


def expected(predicate) -> list[str]:
    rows = [(BASE + timedelta(hours=hours), fields) for hours, fields in ROWS]
    return [fields["conversion_id"] for received, fields in sorted(rows, key=lambda r: r[0], reverse=True)
            if predicate(received, fields)]  # fmt: skip


def at(day: int, hour: int = 0) -> datetime:
    return datetime(2025, 3, day, hour, tzinfo=UTC)


FILTERS = [
    ("", lambda r, f: True),
    ("offer_name=Shopee", lambda r, f: f.get("offer_name") == "Shopee"),
    ("offer_id=20", lambda r, f: f.get("offer_id") == "20"),
    ("sub_id=s2", lambda r, f: f.get("sub_id") == "s2"),
    ("media_id=m1", lambda r, f: f.get("media_id") == "m1"),
    ("click_id=k1", lambda r, f: f.get("click_id") == "k1"),
    ("conversion_id=a", lambda r, f: f["conversion_id"] == "a"),
    ("status=approved", lambda r, f: f.get("status") == "approved"),
    ("is_duplicate=true", lambda r, f: f.get("is_duplicate", False)),
    ("is_duplicate=false", lambda r, f: not f.get("is_duplicate", False)),
    ("has_error=true", lambda r, f: "processing_error" in f),
    ("has_error=false", lambda r, f: "processing_error" not in f),
    ("offer_id=10&sub_id=s1&is_duplicate=false", lambda r, f: f.get("offer_id") == "10" and not f.get("is_duplicate")),
    # dates are whole UTC days, `to` included
    ("from=2025-03-02", lambda r, f: r >= at(2)),
    ("to=2025-03-02", lambda r, f: r < at(3)),
    ("from=2025-03-02&to=2025-03-02", lambda r, f: at(2) <= r < at(3)),
    # datetimes: both ends inclusive; no offset means UTC
    ("from=2025-03-01T17:00:00Z&to=2025-03-02T14:00:00", lambda r, f: at(1, 17) <= r <= at(2, 14)),
    ("from=2025-03-02T22:00:00%2B08:00", lambda r, f: r >= at(2, 14)),
    # on the partner's conversion time (3 days before receipt here) instead
    ("time_field=conversion_datetime&to=2025-02-26", lambda r, f: r - timedelta(days=3) < at(1) - timedelta(days=2)),
    ("time_field=conversion_datetime&from=2025-02-27", lambda r, f: r - timedelta(days=3) >= at(1) - timedelta(days=2)),
]  # fmt: skip


@pytest.mark.parametrize(("query", "predicate"), FILTERS, ids=[q or "none" for q, _ in FILTERS])
def test_each_filter(api, listed, query, predicate):
    assert ids(api.get(f"{CONVERSIONS}?{query}")) == expected(predicate)


def test_rows_show_the_stored_columns(api, listed):
    body = api.get(f"{CONVERSIONS}?conversion_id=a").json()
    duplicate, original = body["results"]
    assert original["usd_sale_amount"] == "10.00" and original["usd_earning"] == "1.00"
    assert original["received_at"] == "2025-03-01T12:00:00Z"
    assert original["outcome"] == "original" and original["duplicate_of"] is None
    assert duplicate["outcome"] == "duplicate" and duplicate["is_duplicate"] is True
    assert "raw_data" not in original and "request_headers" not in original
    assert set(original) == {*CONVERSION_COLUMNS, "outcome"}
    assert {"status", "currency", "offer_name", "processing_error"} <= set(original)


def test_rows_recorded_through_the_postback_endpoint(api, involve):
    api.get("/partner/involve/event?conversion_id=IA-1&aff_sub=test123&usd_payout=4.67&offer_id=7")
    api.get("/partner/involve/event?conversion_id=IA-1&aff_sub=test123&usd_payout=4.67&offer_id=7")
    api.get("/partner/involve/event?aff_sub=test123&usd_payout=oops")
    rows = api.get(f"{CONVERSIONS}?sub_id=test123").json()["results"]
    assert [row["outcome"] for row in rows] == ["rejected", "duplicate", "original"]
    assert rows[2]["usd_earning"] == "4.67" and rows[1]["duplicate_of"] == rows[2]["id"]


# --- pagination ---------------------------------------------------------------------


def test_default_limit_is_50_and_next_is_null_on_the_last_page(api, involve):
    for n in range(55):
        add(involve, received_at=BASE + timedelta(minutes=n))
    first = api.get(CONVERSIONS).json()
    assert first["limit"] == 50 and len(first["results"]) == 50
    second = api.get(first["next"]).json()
    assert len(second["results"]) == 5 and second["next"] is None


def test_pages_never_skip_or_repeat_while_postbacks_arrive(api, involve):
    # Several rows share a received_at: the id breaks the tie.
    for n in range(40):
        add(involve, conversion_id=f"old{n}", received_at=BASE + timedelta(seconds=n // 3), sub_id="s")
    before = list(partner_rows(involve).order_by("-received_at", "-id").values_list("conversion_id", flat=True))
    seen: list[str] = []
    url = f"{CONVERSIONS}?limit=7&sub_id=s"
    pages = 0
    while url:
        body = api.get(url).json()
        seen += [row["conversion_id"] for row in body["results"]]
        url = body["next"]
        pages += 1
        # New postbacks between page fetches: through the endpoint (newest of all), and a
        # row received at the very instant of the page's last row (a later id breaks the tie).
        api.get(f"/partner/involve/event?conversion_id=new{pages}&aff_sub=s")
        last_received = datetime.fromisoformat(body["results"][-1]["received_at"])
        add(involve, conversion_id=f"tie{pages}", received_at=last_received, sub_id="s")
    assert pages == 6
    assert seen == before
    assert len(set(seen)) == len(seen)


def test_next_keeps_every_filter(api, listed):
    body = api.get(f"{CONVERSIONS}?offer_name=Shopee&limit=1&is_duplicate=false").json()
    query = parse_qs(urlsplit(body["next"]).query)
    assert query["offer_name"] == ["Shopee"] and query["limit"] == ["1"] and query["is_duplicate"] == ["false"]
    assert ids(api.get(body["next"])) == ["a"]


def test_limit_1000_is_allowed(api, listed):
    assert len(ids(api.get(f"{CONVERSIONS}?limit=1000"))) == len(ROWS)


# --- CSV ----------------------------------------------------------------------------


def test_csv_streams_the_same_rows_and_parses_back(api, involve):
    for n in range(130):
        add(
            involve,
            conversion_id=f"x{n}",
            received_at=BASE + timedelta(minutes=n),
            usd_sale_amount=Decimal(n) + Decimal("0.25"),
            offer_name='Shop, "quoted"\nname' if n == 3 else "Plain",
            is_duplicate=n % 10 == 0,
        )
    response = api.get(f"{CONVERSIONS}?format=csv&is_duplicate=false")
    assert isinstance(response, StreamingHttpResponse)
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"] == 'attachment; filename="involve_asia-conversions.csv"'
    parsed = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    listing = api.get(f"{CONVERSIONS}?is_duplicate=false&limit=1000").json()["results"]
    assert [row["id"] for row in parsed] == [str(row["id"]) for row in listing]
    assert len(parsed) == 117
    stored = {row.pk: row for row in partner_rows(involve)}
    for row in parsed:
        original = stored[int(row["id"])]
        assert row["conversion_id"] == original.conversion_id
        assert Decimal(row["usd_sale_amount"]) == original.usd_sale_amount
        assert datetime.fromisoformat(row["received_at"]) == original.received_at
        assert row["offer_name"] == original.offer_name
        assert (row["is_duplicate"], row["outcome"], row["offer_id"]) == ("false", "original", "")
    assert list(parsed[0]) == list(EXPORT_COLUMNS)
    assert list(parsed[0])[:2] == ["partner_code", "partner_name"] and "request_digests" not in parsed[0]


def test_csv_limit_and_cursor(api, listed):
    first = api.get(f"{CONVERSIONS}?limit=2").json()
    response = api.get(
        f"{CONVERSIONS}?format=csv&limit=2&cursor={parse_qs(urlsplit(first['next']).query)['cursor'][0]}"
    )
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert [row["conversion_id"] for row in rows] == expected(lambda r, f: True)[2:4]


def test_export_batches_join_without_gaps(involve):
    for n in range(23):
        add(involve, conversion_id=f"e{n}", received_at=BASE + timedelta(seconds=n // 4))
    everything = conversion_queryset(partner=involve, filters=ConversionFilters())
    exported = [row[0] for row in conversion_export_rows(queryset=everything, batch_size=5)]
    assert exported == list(partner_rows(involve).order_by("-received_at", "-id").values_list("id", flat=True))
    capped = conversion_export_rows(queryset=everything, batch_size=5, limit=12)
    assert len(list(capped)) == 12


# --- stats --------------------------------------------------------------------------


def test_stats_equal_sums_computed_here(api, involve):
    now = datetime.now(UTC)
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    specs = []
    for n in range(60):
        days_ago = n % 35
        received = today - timedelta(days=days_ago) + timedelta(minutes=n) if days_ago else now - timedelta(seconds=n)
        kind = "rejected" if n % 11 == 0 else "duplicate" if n % 7 == 0 else "original"
        fields = {
            "conversion_id": f"s{n}",
            "received_at": received,
            "offer_id": str(n % 4),
            "offer_name": f"Offer {n % 4}",
            "usd_sale_amount": Decimal(n * 3) + Decimal("0.33"),
            "usd_earning": Decimal(n) / 4,
        }
        if kind == "rejected":
            fields["processing_error"] = "usd_sale_amount: bad"
        if kind == "duplicate":
            fields["is_duplicate"] = True
        add(involve, **fields)
        specs.append((kind, fields))

    body = api.get(STATS).json()

    first_day = (today - timedelta(days=29)).date()
    in_range = [(kind, f) for kind, f in specs if f["received_at"].date() >= first_day]
    originals = [f for kind, f in in_range if kind == "original"]
    assert body["totals"] == {
        "originals": len(originals),
        "duplicates": sum(kind == "duplicate" for kind, _ in in_range),
        "rejected": sum(kind == "rejected" for kind, _ in in_range),
        "usd_sale_amount": str(sum(f["usd_sale_amount"] for f in originals)),
        "usd_earning": str(sum((f["usd_earning"] for f in originals), Decimal("0")).quantize(Decimal("0.01"))),
    }
    assert len(body["days"]) == 30
    assert body["days"][0]["date"] == first_day.isoformat() and body["days"][-1]["date"] == today.date().isoformat()
    per_day = Counter(f["received_at"].date().isoformat() for f in originals)
    assert {day["date"]: day["originals"] for day in body["days"]} == {
        (first_day + timedelta(days=n)).isoformat(): per_day.get((first_day + timedelta(days=n)).isoformat(), 0)
        for n in range(30)
    }
    by_offer = Counter(f["offer_id"] for f in originals)
    top = body["top_offers"]
    assert [offer["originals"] for offer in top] == sorted(by_offer.values(), reverse=True)
    for offer in top:
        assert offer["originals"] == by_offer[offer["offer_id"]]
        assert offer["offer_name"] == f"Offer {offer['offer_id']}"
        assert Decimal(offer["usd_sale_amount"]) == sum(
            f["usd_sale_amount"] for f in originals if f["offer_id"] == offer["offer_id"]
        )
    assert body["range"]["time_field"] == "received_at"


def test_stats_for_a_range_on_conversion_time(api, listed):
    body = api.get(f"{STATS}?time_field=conversion_datetime&from=2025-02-26&to=2025-02-27&top=1").json()
    # conversion time = received - 3 days: rows a, b (Feb 26) and c, dup a, rejected (Feb 27)
    assert body["totals"] == {
        "originals": 3,
        "duplicates": 1,
        "rejected": 1,
        "usd_sale_amount": "60.75",
        "usd_earning": "6.07",
    }
    assert [day["date"] for day in body["days"]] == ["2025-02-26", "2025-02-27"]
    assert [(day["originals"], day["duplicates"], day["rejected"]) for day in body["days"]] == [(2, 0, 0), (1, 1, 1)]
    assert body["top_offers"] == [
        {
            "offer_id": "10",
            "offer_name": "Shopee",
            "originals": 2,
            "duplicates": 1,
            "usd_sale_amount": "40.25",
            "usd_earning": "4.02",
        }
    ]
    assert body["range"] == {
        "time_field": "conversion_datetime",
        "start": "2025-02-26T00:00:00Z",
        "end": "2025-02-28T00:00:00Z",
    }


def test_stats_of_an_empty_range_are_zero(api, listed):
    body = api.get(f"{STATS}?from=2024-01-01&to=2024-01-02").json()
    assert body["totals"]["originals"] == 0 and body["totals"]["usd_sale_amount"] == "0.00"
    assert [day["originals"] for day in body["days"]] == [0, 0]
    assert body["top_offers"] == []


# --- invalid parameters -------------------------------------------------------------

INVALID = [
    (CONVERSIONS, "limit=0", "limit"),
    (CONVERSIONS, "limit=1001", "limit"),
    (CONVERSIONS, "limit=ten", "limit"),
    (CONVERSIONS, "from=yesterday", "from"),
    (CONVERSIONS, "to=2025-13-01", "to"),
    (CONVERSIONS, "from=2025-03-02&to=2025-03-01", "to"),
    (CONVERSIONS, "time_field=created_at", "time_field"),
    (CONVERSIONS, "is_duplicate=maybe", "is_duplicate"),
    (CONVERSIONS, "has_error=2", "has_error"),
    (CONVERSIONS, "cursor=not-a-cursor", "cursor"),
    (CONVERSIONS, "cursor=MjAyNXxhYmM", "cursor"),
    (CONVERSIONS, "format=xml", "format"),
    (CONVERSIONS, "sub_id=", "sub_id"),
    (CONVERSIONS, "status=won", "status"),
    (CONVERSIONS, "currency=US$", "currency"),
    (CONVERSIONS, "subid=s1", "subid"),
    (CONVERSIONS, "to=9999-12-31", "to"),
    (CONVERSIONS, "from=1900-01-01T00:00:00Z", "from"),
    (STATS, "from=2025-02-30", "from"),
    (STATS, "from=2999-12-01", "from"),
    (STATS, "from=2024-01-01&to=2025-06-01", "to"),
    (STATS, "top=0", "top"),
    (STATS, "top=101", "top"),
    (STATS, "time_field=updated_at", "time_field"),
    (STATS, "limit=5", "limit"),
]


@pytest.mark.parametrize(("url", "query", "parameter"), INVALID, ids=[f"{u[-5:]}:{q}" for u, q, _ in INVALID])
def test_invalid_parameter_is_400_naming_it(api, involve, url, query, parameter):
    response = api.get(f"{url}?{query}")
    assert response.status_code == 400
    body = response.json()
    assert list(body["errors"]) == [parameter]
    assert body["detail"] == f"Invalid query parameter(s): {parameter}."


@pytest.mark.parametrize("suffix", ["conversions", "stats"])
def test_unreachable_partner_database_is_503(api, suffix):
    partner_create(
        partner_code="acme",
        partner_name="Acme",
        endpoint_path="/acme/event",
        database_name="acme_db",
        database_url="postgres://root@127.0.0.1:1/nowhere",
    )
    try:
        response = api.get(f"/partner/acme/event/{suffix}")
    finally:
        partner_database_unregister("acme_db")
    assert response.status_code == 503
    assert response["Retry-After"] == "30"
    assert response.json() == {"detail": "The partner's database is unavailable; retry later."}


def test_stats_range_defaults_to_the_last_30_days(api, listed):
    body = api.get(STATS).json()
    start = date.fromisoformat(body["range"]["start"][:10])
    assert (datetime.now(UTC).date() - start).days == 29


def test_errors_of_a_csv_request_are_json_too(api, involve):
    unauthenticated = Client().get(f"{CONVERSIONS}?format=csv")  # a client without the token
    assert unauthenticated.status_code == 401 and unauthenticated["Content-Type"] == "application/json"
    invalid = api.get(f"{CONVERSIONS}?format=csv&has_error=perhaps")
    assert invalid.status_code == 400 and invalid["Content-Type"] == "application/json"
    assert list(invalid.json()["errors"]) == ["has_error"]


def test_lifecycle_status_currency_filters_and_stats_by_status(api, involve):
    from tests.conftest import fixture_queries

    created, approved = fixture_queries("involve_asia", "lifecycle_approve")[:2]
    api.get(f"/partner/involve/event?{created}")  # pending, then approved: 4.94 earned
    api.get(f"/partner/involve/event?{approved}")
    api.get("/partner/involve/event?conversion_id=P1&usd_sale_amount=10&usd_payout=1&conversion_status=pending")
    api.get("/partner/involve/event?conversion_id=P2&usd_sale_amount=20&usd_payout=2&conversion_status=pending")
    api.get("/partner/involve/event?conversion_id=P2&usd_sale_amount=20&usd_payout=2&conversion_status=pending")
    api.get("/partner/involve/event?conversion_id=N1&usd_sale_amount=5&usd_payout=0.5")

    assert ids(api.get(f"{CONVERSIONS}?status=approved")) == ["IA-900001"]
    assert sorted(ids(api.get(f"{CONVERSIONS}?status=pending"))) == ["P1", "P2", "P2"]
    assert ids(api.get(f"{CONVERSIONS}?currency=myr")) == ["IA-900001"]
    row = api.get(f"{CONVERSIONS}?conversion_id=IA-900001").json()["results"][0]
    assert (row["status"], row["status_raw"], row["currency"]) == ("approved", "approved", "MYR")
    assert (row["sale_amount_local"], row["payout_local"], row["usd_earning"]) == ("415.80", "22.00", "4.94")

    by_status = {entry["status"]: entry for entry in api.get(STATS).json()["by_status"]}
    assert list(by_status) == ["pending", "approved", None]
    assert (by_status["approved"]["originals"], by_status["approved"]["usd_earning"]) == (1, "4.94")
    assert by_status["pending"]["originals"] == 2 and by_status["pending"]["duplicates"] == 1
    assert (by_status["pending"]["usd_sale_amount"], by_status["pending"]["usd_earning"]) == ("30.00", "3.00")
    assert (by_status[None]["originals"], by_status[None]["usd_sale_amount"]) == (1, "5.00")
