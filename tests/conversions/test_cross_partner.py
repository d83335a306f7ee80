"""Reads across partners (conversions.cross_partner): the partner list's counts, the overview
and the search answer from one statement per shared database, with the per-partner numbers."""

import datetime
import re
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from decimal import Decimal

import pytest
from django.contrib.auth.models import User
from django.db import connections
from django.utils import timezone

from conversions import cross_partner
from conversions.cross_partner import partners_conversion_counts, partners_conversions_find, partners_stats
from conversions.models import PartnerConversion
from conversions.selectors import TimeRange, conversion_count, conversion_stats
from infra.databases import partner_database, shared_database_alias
from infra.databases.breaker import database_guard
from partners.models import PartnerScope
from partners.services import partner_create

UTC = datetime.UTC
DAY = datetime.datetime(2025, 3, 1, 10, 0, tzinfo=UTC)
RANGE = TimeRange(start=datetime.datetime(2025, 3, 1, tzinfo=UTC), end=datetime.datetime(2025, 3, 4, tzinfo=UTC))
SEARCH = "/admin/partners/partner/search/"


@pytest.fixture
def backend() -> str:
    return "postgres"  # every partner a schema of the run's shared database


def add(partner, **fields) -> PartnerConversion:
    fields.setdefault("is_processed", not fields.get("is_duplicate") and not fields.get("processing_error"))
    return PartnerConversion.objects.using(partner.database_alias).create(partner_id=partner.pk, **fields)


def seed(partner, *, scale: int = 1) -> None:
    """Three days of originals with statuses, a duplicate, invalid postbacks, one row out of range."""
    rows = [
        (0, "a", "approved", "100.00", "8.00"),
        (0, "b", "pending", "50.50", "4.04"),
        (1, "c", "approved", "20.00", "1.60"),
        (2, "d", None, "9.99", "0.80"),
    ]
    for day, conversion_id, status, sale, earning in rows[: scale + 1]:
        add(
            partner,
            conversion_id=f"{partner.partner_code}-{conversion_id}",
            click_id=f"click-{conversion_id}",
            status=status,
            offer_id="10",
            usd_sale_amount=Decimal(sale),
            usd_earning=Decimal(earning),
            received_at=DAY + datetime.timedelta(days=day),
            conversion_datetime=DAY + datetime.timedelta(days=day - 1),
        )
    add(
        partner,
        conversion_id=f"{partner.partner_code}-a",
        is_duplicate=True,
        status="approved",
        usd_sale_amount=Decimal(100),
        received_at=DAY + datetime.timedelta(hours=1),
    )
    for _ in range(scale):
        add(partner, conversion_id="", processing_error="usd_sale_amount: bad", received_at=DAY)
    add(partner, conversion_id="late", status="approved", usd_sale_amount=Decimal(5), received_at=DAY.replace(month=5))


@contextmanager
def statements(*aliases: str) -> Iterator[dict[str, list[str]]]:
    """The statements each alias's connection runs inside the block."""
    seen: dict[str, list[str]] = {alias: [] for alias in aliases}
    with ExitStack() as stack:
        for alias in aliases:

            def record(execute, sql, params, many, context, alias=alias):
                seen[alias].append(sql)
                return execute(sql, params, many, context)

            stack.enter_context(connections[alias].execute_wrapper(record))
        yield seen


def per_partner_count(partner, since=None):
    with partner_database(partner):
        return conversion_count(partner=partner, since=since)


def per_partner_stats(partner, time_range):
    with partner_database(partner):
        return conversion_stats(partner=partner, time_range=time_range, top=0, statuses=False)


@pytest.fixture
def three(make_partner):
    partners = [make_partner(code) for code in ("xacme", "xbolt", "xcosmo")]
    for scale, partner in enumerate(partners, start=1):
        seed(partner, scale=scale)
    return partners


# --- counts: the partner list ------------------------------------------------------------


def test_counts_are_the_per_partner_counts_from_one_statement(three):
    shared = shared_database_alias(three[0].database_alias)
    since = DAY + datetime.timedelta(hours=12)
    with statements(shared, *(partner.database_alias for partner in three)) as seen:
        counts = partners_conversion_counts(partners=three, since=since)
        everything = partners_conversion_counts(partners=three)
    assert (
        counts
        == {partner.pk: per_partner_count(partner, since) for partner in three}
        == {
            three[0].pk: 1,
            three[1].pk: 2,
            three[2].pk: 3,
        }
    )
    assert everything == {partner.pk: per_partner_count(partner) for partner in three}
    assert len(seen[shared]) == 2 and all("UNION ALL" in statement for statement in seen[shared])
    assert not any(seen[partner.database_alias] for partner in three)


def test_many_partners_are_read_in_chunks(three, monkeypatch):
    monkeypatch.setattr(cross_partner, "UNION_CHUNK", 2)
    shared = shared_database_alias(three[0].database_alias)
    with statements(shared) as seen:
        counts = partners_conversion_counts(partners=three)
    assert counts == {partner.pk: per_partner_count(partner) for partner in three}
    assert len(seen[shared]) == 2


def test_the_partner_list_counts_its_page_in_one_statement(manager_client, three):
    for index in range(3):
        manager_client.get(f"/partner/{three[1].endpoint_path.strip('/')}?conversion_id=today-{index}")
    shared = shared_database_alias(three[0].database_alias)
    with statements(shared, *(partner.database_alias for partner in three)) as seen:
        response = manager_client.get("/admin/partners/partner/")
    assert response.status_code == 200
    shown = re.findall(r'<td class="field-postbacks_today">([^<]*)</td>', response.content.decode())
    assert shown == ["0", "3", "0"]  # by code: xacme, xbolt, xcosmo
    midnight = timezone.make_aware(datetime.datetime.combine(timezone.localdate(), datetime.time.min))
    assert [per_partner_count(partner, midnight) for partner in three] == [0, 3, 0]
    assert len(seen[shared]) == 1
    assert not any(seen[partner.database_alias] for partner in three)


def test_a_partner_not_provisioned_is_unavailable_and_the_others_still_count(three, database_pool, manager_client):
    ghost = partner_create(
        partner_code="xghost",
        partner_name="Xghost",
        endpoint_path="/xghost/event",
        database_name="xghost_db",
        database_url=database_pool.url("postgres", "xghost_db"),  # its schema was never created
    )
    partners = [*three, ghost]
    shared = shared_database_alias(three[0].database_alias)
    with statements(shared) as seen:
        counts = partners_conversion_counts(partners=partners)
    assert counts == {**{partner.pk: per_partner_count(partner) for partner in three}, ghost.pk: None}
    # The statement, the catalog's word on which schemas can be read, the statement without the ghost.
    assert len(seen[shared]) == 3
    html = manager_client.get("/admin/partners/partner/").content.decode()
    assert re.findall(r'<td class="field-postbacks_today">([^<]*)</td>', html) == ["0", "0", "0", "unavailable"]


def test_an_unreachable_shared_database_marks_each_of_its_partners(make_partner, manager_client, analyst_client):
    acme = make_partner("xacme")
    add(acme, conversion_id="x1", click_id="k1")
    down = [
        partner_create(
            partner_code=code,
            partner_name=code.title(),
            endpoint_path=f"/{code}/event",
            database_name=f"{code}_db",
            database_url=f"postgres://root@127.0.0.1:1/nowhere?connect_timeout=1&schema={code}_db",
        )
        for code in ("xdown1", "xdown2")
    ]
    assert partners_conversion_counts(partners=[acme, *down]) == {acme.pk: 1, down[0].pk: None, down[1].pk: None}
    results = partners_stats(partners=[*down, acme], time_range=RANGE, top=0)
    assert [result.stats is None for result in results] == [True, True, False]
    assert all(result.unavailable for result in results[:2])

    listed = manager_client.get("/admin/partners/partner/")
    assert listed.status_code == 200
    cells = re.findall(r'<td class="field-postbacks_today">([^<]*)</td>', listed.content.decode())
    assert cells == ["1", "unavailable", "unavailable"]
    overview = analyst_client.get("/admin/partners/partner/dashboard/")
    assert overview.status_code == 200 and overview.content.decode().count("database unavailable") == 2
    found = analyst_client.get(SEARCH, {"q": "x1"})
    assert found.status_code == 200
    assert [row["conversion_id"] for row in found.context["rows"]] == ["x1"]
    assert [partner.partner_code for partner, _ in found.context["search"].unavailable] == ["xdown1", "xdown2"]


def test_a_statement_that_runs_out_of_time_reads_one_by_one_and_leaves_the_breaker_closed(three, monkeypatch):
    def too_slow(cursor, *args, **kwargs):
        # The statement over the chunk outlasts DB_STATEMENT_TIMEOUT_MS (here 50 ms).
        cursor.execute("SET statement_timeout = 50")
        try:
            cursor.execute("SELECT pg_sleep(1)")
        finally:
            cursor.execute("RESET statement_timeout")

    monkeypatch.setattr(cross_partner, "_union", too_slow)
    assert partners_conversion_counts(partners=three) == {partner.pk: per_partner_count(partner) for partner in three}
    # A slow admin page must not make the database refuse every partner's postbacks.
    assert not database_guard(three[0].database_alias).is_open


def test_partners_in_other_storage_are_read_one_by_one(make_partner, database_pool, three):
    alone = make_partner("xsolo", database_url=database_pool.url("sqlite", "xsolo_db"))
    seed(alone, scale=2)
    partners = [alone, *three]
    assert partners_conversion_counts(partners=partners) == {p.pk: per_partner_count(p) for p in partners}
    results = partners_stats(partners=partners, time_range=RANGE, top=0)
    assert [result.stats for result in results] == [per_partner_stats(p, RANGE) for p in partners]
    found = partners_conversions_find(partners=partners, term="click-b")
    assert sorted(hit.partner.partner_code for hit in found.found) == ["xacme", "xbolt", "xcosmo", "xsolo"]


# --- the overview ------------------------------------------------------------------------


@pytest.mark.parametrize("time_field", ["received_at", "conversion_datetime"])
def test_overview_stats_are_conversion_stats_from_one_statement(three, time_field):
    time_range = TimeRange(time_field=time_field, start=RANGE.start, end=RANGE.end)
    shared = shared_database_alias(three[0].database_alias)
    with statements(shared, *(partner.database_alias for partner in three)) as seen:
        results = partners_stats(partners=three, time_range=time_range, top=0)
    assert [result.partner for result in results] == three
    assert [result.stats for result in results] == [per_partner_stats(partner, time_range) for partner in three]
    assert results[2].stats.totals.originals == (4 if time_field == "received_at" else 2)
    assert len(seen[shared]) == 1
    assert not any(seen[partner.database_alias] for partner in three)


def test_the_overview_page_draws_the_per_partner_numbers(analyst_client, three):
    shared = shared_database_alias(three[0].database_alias)
    with statements(shared) as seen:
        response = analyst_client.get(
            "/admin/partners/partner/dashboard/?start=2025-03-01&end=2025-03-03&time_field=received_at"
        )
    assert response.status_code == 200
    assert [result.stats for result in response.context["results"]] == [
        per_partner_stats(partner, RANGE) for partner in three
    ]
    assert len(seen[shared]) == 1


# --- the search --------------------------------------------------------------------------


def test_search_finds_a_conversion_id_or_click_id_in_every_partner(analyst_client, three):
    shared = shared_database_alias(three[0].database_alias)
    with statements(shared) as seen:
        response = analyst_client.get(SEARCH, {"q": "click-b"})
    assert response.status_code == 200
    assert len(seen[shared]) == 1
    rows = response.context["rows"]
    assert [(row["partner"].partner_code, row["conversion_id"]) for row in rows] == [
        ("xacme", "xacme-b"),
        ("xbolt", "xbolt-b"),
        ("xcosmo", "xcosmo-b"),
    ]
    by_id = analyst_client.get(SEARCH, {"q": "xcosmo-a"}).context["rows"]
    assert [(row["partner"].partner_code, row["conversion_id"]) for row in by_id] == [("xcosmo", "xcosmo-a")] * 2
    assert "duplicate" in str(by_id[0]["outcome"]) and "original" in str(by_id[1]["outcome"])

    page = analyst_client.get(rows[0]["change_url"])  # the row, in its partner's conversions
    assert page.status_code == 200 and "xacme-b" in page.content.decode()
    listed = analyst_client.get(rows[0]["list_url"])
    assert listed.status_code == 200 and "xacme-b" in listed.content.decode()


def test_search_lists_only_the_partners_a_scoped_analyst_may_see(client, users, three):
    analyst = users["analyst"]
    scope = PartnerScope.objects.create(user=analyst)
    scope.partners.add(three[1])
    client.force_login(analyst)
    response = client.get(SEARCH, {"q": "click-a"})
    assert [row["partner"].partner_code for row in response.context["rows"]] == ["xbolt"]
    assert response.context["search"].searched == 1
    assert "xcosmo" not in response.content.decode() and "xacme" not in response.content.decode()

    client.force_login(users["root"])
    everyone = client.get(SEARCH, {"q": "click-a"}).context["rows"]
    assert sorted(row["partner"].partner_code for row in everyone) == ["xacme", "xbolt", "xcosmo"]


def test_search_needs_the_view_permission_on_conversions(client, three):
    client.force_login(User.objects.create_user("staff", password="pw", is_staff=True))
    assert client.get(SEARCH, {"q": "xacme-a"}).status_code == 403


def test_search_refuses_what_no_conversion_can_hold(analyst_client, three):
    for term in ("bad\x00id", "x" * 500, "  "):
        response = analyst_client.get(SEARCH, {"q": term})
        assert response.status_code == 200, term
        assert "rows" not in response.context and response.context["form"].errors
    assert analyst_client.get(SEARCH).context["form"].errors == {}


def test_search_takes_a_term_as_data_whatever_it_holds(three):
    tricky = "o'neil{pk}%s\\"
    add(three[2], conversion_id=tricky, click_id="{table}")
    assert [hit.conversion_id for hit in partners_conversions_find(partners=three, term=tricky).found] == [tricky]
    assert [hit.click_id for hit in partners_conversions_find(partners=three, term="{table}").found] == ["{table}"]


def test_search_lists_the_newest_and_says_more_match(three):
    found = partners_conversions_find(partners=three, term="click-a", limit=2)
    assert len(found.found) == 2 and found.more
    assert found.found[0].received_at >= found.found[1].received_at


def test_the_partner_list_links_to_the_search(analyst_client, three):
    assert f'href="{SEARCH}"' in analyst_client.get("/admin/partners/partner/").content.decode()
