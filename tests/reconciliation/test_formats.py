"""Network report formats: InvolveAsia's published records read by default, amounts compared
only in the currency the report states, the partner's days, recovery meeting the real
postback, and the source preview."""

import datetime
from decimal import Decimal
from urllib.parse import parse_qsl, urlencode

import pytest
from django.utils import timezone

from conversions.ingest.decide import decide
from conversions.ingest.hooks import decision_listener, decision_listener_remove
from conversions.models import PartnerConversion
from conversions.outcomes import Outcome
from partners.models import Partner
from partners.services import SEED_PARTNERS
from reconciliation import sources
from reconciliation.formats import report_mapping, report_row_compare, report_row_map, source_preview
from reconciliation.models import ReconciliationRow, ReportSource
from reconciliation.services import reconciliation_run, run_missing_record, run_report_apply
from tests.conftest import fixture_queries, partner_rows
from tests.reconciliation.fake_involve_asia import FakeInvolveAsia, VirtualClock, record

KEY, SECRET = "ia-key-58d1", "ia-secret-c07e22"
ENDPOINT = "/partner/involve/event?"
# InvolveAsia's postback as its dashboard sends it (pending, MYR, 2025-03-01 10:00:00).
POSTBACK = dict(parse_qsl(fixture_queries("involve_asia", "lifecycle_approve")[0]))
DAY = datetime.date(2025, 3, 1)
KL = datetime.timezone(datetime.timedelta(hours=8))


def postback(number: int, **changes: str) -> dict[str, str]:
    """The network's postback for record(number): the same conversion, its own format."""
    return {**POSTBACK, "conversion_id": str(record(number)["conversion_id"]), "aff_sub": f"s{number}", **changes}


def seed_partner(**fields) -> Partner:
    """The seed InvolveAsia partner, unsaved (mapping needs no database)."""
    (definition,) = [d for d in SEED_PARTNERS if d["partner_code"] == "involve_asia"]
    return Partner(**{**definition, **fields})


def api_source(partner, **fields) -> ReportSource:
    return ReportSource(partner=partner, name="InvolveAsia API", kind="involve_asia", **fields)


def mapped(source, values):
    result = report_row_map(
        partner=source.partner, mapping=report_mapping(partner=source.partner, source=source), values=values
    )
    assert result.is_valid, result.errors
    return result


# --- reading -----------------------------------------------------------------------------


def test_an_involve_asia_record_is_read_by_its_published_fields():
    source = api_source(seed_partner())
    result = mapped(source, record(1, sale_amount=415.8, payout=20.79, conversion_status="rejected"))

    assert result.values == {
        "conversion_id": "778800001",
        "offer_id": "1021",
        "offer_name": "Shopee MY",
        "conversion_datetime": datetime.datetime(2025, 3, 1, 10, 0, tzinfo=KL),
        "sale_amount_local": Decimal("415.80"),
        "payout_local": Decimal("20.79"),
        "currency": "MYR",
        "sub_id": "s1",
        "status": "rejected",
        "status_raw": "rejected",
    }
    # base_payout and bonus_payout are parts of payout, not added to it.
    assert {"base_payout", "bonus_payout", "aff_sub2", "adv_sub1"} <= set(result.ignored)


def test_a_record_in_usd_gives_our_usd_amounts_and_a_converted_one_only_those():
    native = mapped(api_source(seed_partner()), record(1, currency="USD", sale_amount="93.47", payout=4.67))
    assert {name: native.values.get(name) for name in ("currency", "usd_sale_amount", "usd_earning")} == {
        "currency": "USD",
        "usd_sale_amount": Decimal("93.47"),
        "usd_earning": Decimal("4.67"),
    }
    assert native.values["payout_local"] == Decimal("4.67")

    # Converted on request: USD is the report's currency, not the conversion's.
    converted = mapped(
        api_source(seed_partner(), preferred_currency="USD"), record(1, currency="USD", sale_amount=93.47, payout=4.67)
    )
    assert (converted.values["usd_sale_amount"], converted.values["usd_earning"]) == (Decimal("93.47"), Decimal("4.67"))
    assert not {"currency", "sale_amount_local", "payout_local"} & set(converted.values)


def test_the_column_mapping_overrides_and_the_report_time_zone_is_the_sources():
    source = api_source(
        seed_partner(), column_mapping={"sub_id": "adv_sub1", "media_id": "aff_sub2"}, report_timezone="UTC"
    )
    values = mapped(source, record(1)).values
    assert (values["sub_id"], values["media_id"]) == ("ORDER-1", "m1")
    assert values["conversion_datetime"] == datetime.datetime(2025, 3, 1, 10, 0, tzinfo=datetime.UTC)


def test_a_csv_is_still_read_through_the_partners_parameter_mapping_in_the_partners_zone():
    source = ReportSource(partner=seed_partner(timezone="Asia/Jakarta"), name="Monthly CSV", kind="csv")
    values = mapped(source, postback(1)).values
    assert (values["usd_earning"], values["sub_id"], values["currency"]) == (Decimal("4.67"), "s1", "MYR")
    assert values["conversion_datetime"].utcoffset() == datetime.timedelta(hours=7)


# --- comparing ---------------------------------------------------------------------------

OURS = {
    "status": "pending",
    "currency": "MYR",
    "sale_amount_local": Decimal("415.80"),
    "payout_local": Decimal("20.79"),
    "usd_sale_amount": Decimal("93.47"),
    "usd_earning": Decimal("4.67"),
}
LOCAL_ONLY = {**OURS, "usd_sale_amount": None, "usd_earning": None}
D = Decimal


@pytest.mark.parametrize(
    ("ours", "theirs", "kind", "differences"),
    [
        pytest.param(OURS, {"currency": "MYR", "payout_local": D("20.80")}, "matched", {}, id="one-cent"),
        pytest.param(
            OURS,
            {"currency": "MYR", "payout_local": D("20.81")},
            "amount_differs",
            {"payout_local": ["20.79", "20.81"]},
            id="two-cents",
        ),
        pytest.param(
            OURS,
            {"currency": "SGD", "sale_amount_local": D("120.00"), "payout_local": D("6.00")},
            "currency_differs",
            {"currency": ["MYR", "SGD"], "local amounts": ["in MYR", "in SGD: not compared"]},
            id="other-currency",
        ),
        pytest.param(OURS, {"usd_earning": D("4.68")}, "matched", {}, id="usd-one-cent"),
        pytest.param(
            OURS, {"usd_earning": D("4.69")}, "amount_differs", {"usd_earning": ["4.67", "4.69"]}, id="usd-differs"
        ),
        pytest.param(LOCAL_ONLY, {"usd_earning": D("9.99")}, "matched", {}, id="usd-where-ours-are-local-only"),
        pytest.param(
            {**OURS, "payout_local": None, "sale_amount_local": None, "usd_sale_amount": None, "usd_earning": None},
            {"currency": "MYR", "payout_local": D("20.79")},
            "amount_differs",
            {"payout_local": [None, "20.79"]},
            id="ours-without-amounts",
        ),
        pytest.param(
            OURS,
            {"currency": "USD", "payout_local": D("4.67"), "usd_earning": D("4.67"), "status": "approved"},
            "status_differs",
            {
                "status": ["pending", "approved"],
                "currency": ["MYR", "USD"],
                "local amounts": ["in MYR", "in USD: not compared"],
            },
            id="status-first",
        ),
    ],
)
def test_amounts_are_compared_only_in_the_currency_the_report_states(ours, theirs, kind, differences):
    assert report_row_compare(ours=ours, theirs=theirs) == (kind, differences)


def test_the_same_money_in_another_currency_is_not_news_to_a_conversion():
    original = PartnerConversion(conversion_id="c1", request_digests=[], **LOCAL_ONLY)
    both = {**OURS, "status_raw": "pending"}
    assert decide(incoming=both, original=original, transitions=[]).outcome is Outcome.DUPLICATE
    # With a real change, the missing side is filled in too.
    corrected = decide(incoming={**both, "payout_local": D("22.00")}, original=original, transitions=[])
    assert corrected.outcome is Outcome.UPDATED
    assert set(corrected.changes) == {"payout_local", "usd_sale_amount", "usd_earning"}
    # Amounts where the original has none at all are news.
    bare = PartnerConversion(conversion_id="c1", status="pending", request_digests=[])
    assert decide(incoming=both, original=bare, transitions=[]).outcome is Outcome.UPDATED


# --- against the fake API ------------------------------------------------------------------


@pytest.fixture
def clock(monkeypatch):
    virtual = VirtualClock()
    monkeypatch.setattr(sources, "API_CLOCK", virtual)
    return virtual


@pytest.fixture
def announced():
    seen = []

    def listener(announcement):
        seen.append((announcement.event, announcement.source, announcement.conversion["conversion_id"]))
        return []

    decision_listener(listener)
    yield seen
    decision_listener_remove(listener)


def served_by(fake, partner, **fields) -> ReportSource:
    values = {
        "partner": partner,
        "name": "InvolveAsia API",
        "kind": "involve_asia",
        "base_url": fake.base_url,
        "api_key": KEY,
        "api_secret": SECRET,
        **fields,
    }
    return ReportSource.objects.create(**values)


def rows_of(partner, run):
    rows = ReconciliationRow.objects.using(partner.database_alias).filter(run_id=run.pk)
    return {row.conversion_id: row for row in rows}


def cid(number: int) -> str:
    return str(record(number)["conversion_id"])


@pytest.mark.parametrize("backend", ["postgres"])
def test_the_published_report_without_a_column_mapping_finds_exactly_the_planted_differences_and_recovery_meets_the_real_postback(  # noqa: E501
    client, make_partner, clock, announced
):
    partner = make_partner("involve_asia", timezone="Asia/Kuala_Lumpur")
    for number in (1, 2, 3, 4, 5, 6, 8, 9):
        assert client.get(ENDPOINT + urlencode(postback(number))).json()["status"] == "success"
    report = [
        record(1),
        record(2, payout="20.80"),  # a cent off: the same amount
        record(3, payout=21.5),
        record(4, sale_amount="430.00"),
        record(5, conversion_status="approved"),
        record(6, currency="SGD", sale_amount="120.00", payout="6.00"),
        record(7),  # never received
        record(9, payout="20.81"),  # two cents off
    ]
    fake = FakeInvolveAsia(report, key=KEY, secret=SECRET, clock=clock)
    try:
        run = reconciliation_run(source=served_by(fake, partner), date_from=DAY, date_to=DAY)
    finally:
        fake.stop()

    assert (run.state, run.error, run.report_rows) == ("done", "", 8)
    rows = rows_of(partner, run)
    assert {conversion_id: (row.kind, row.differences) for conversion_id, row in rows.items()} == {
        cid(1): ("matched", {}),
        cid(2): ("matched", {}),
        cid(3): ("amount_differs", {"payout_local": ["20.79", "21.50"]}),
        cid(4): ("amount_differs", {"sale_amount_local": ["415.80", "430.00"]}),
        cid(5): ("status_differs", {"status": ["pending", "approved"]}),
        cid(6): (
            "currency_differs",
            {"currency": ["MYR", "SGD"], "local amounts": ["in MYR", "in SGD: not compared"]},
        ),
        cid(7): ("missing_here", {}),
        cid(8): ("missing_there", {}),
        cid(9): ("amount_differs", {"payout_local": ["20.79", "20.81"]}),
    }
    announced.clear()

    # Recorded from the report: with its amounts and sub id.
    assert run_missing_record(partner=partner, run=run) == {"recorded": 1}
    recovered = partner_rows(partner).get(conversion_id=cid(7))
    assert (
        recovered.status,
        recovered.sub_id,
        recovered.offer_id,
        recovered.currency,
        recovered.sale_amount_local,
        recovered.payout_local,
        recovered.conversion_datetime,
    ) == (
        "pending",
        "s7",
        "1021",
        "MYR",
        Decimal("415.80"),
        Decimal("20.79"),
        datetime.datetime(2025, 3, 1, 2, 0, tzinfo=datetime.UTC),
    )
    assert (recovered.usd_sale_amount, recovered.usd_earning) == (None, None)  # the report is in MYR

    # The network's real postback arrives after all: the same conversion, a duplicate.
    answer = client.get(ENDPOINT + urlencode(postback(7))).json()
    assert answer["status"] == "duplicate"
    originals = partner_rows(partner).filter(conversion_id=cid(7), is_duplicate=False)
    assert originals.count() == 1 and originals.get().updated_at == recovered.updated_at
    assert announced == [("recorded", "report", cid(7))]  # no amount change sent on

    # Applying the report: statuses and comparable amounts, never a currency.
    assert run_report_apply(partner=partner, run=run) == {"updated": 4, "currency kept": 1}
    stored = {c.conversion_id: c for c in partner_rows(partner).filter(is_duplicate=False)}
    assert stored[cid(3)].payout_local == Decimal("21.50")
    assert stored[cid(4)].sale_amount_local == Decimal("430.00")
    assert stored[cid(5)].status == "approved"
    assert (stored[cid(6)].currency, stored[cid(6)].payout_local) == ("MYR", Decimal("20.79"))
    assert rows_of(partner, run)[cid(6)].action == "currency kept"


@pytest.mark.parametrize("backend", ["postgres"])
def test_a_report_converted_to_usd_compares_usd_and_recovers_a_conversion_its_postback_repeats(
    client, make_partner, clock
):
    partner = make_partner("involve_asia", timezone="Asia/Kuala_Lumpur")
    for number in (1, 2):
        assert client.get(ENDPOINT + urlencode(postback(number))).json()["status"] == "success"
    fake = FakeInvolveAsia([record(1), record(2, payout="25.00"), record(3)], key=KEY, secret=SECRET, clock=clock)
    try:
        run = reconciliation_run(source=served_by(fake, partner, preferred_currency="USD"), date_from=DAY, date_to=DAY)
    finally:
        fake.stop()

    rows = rows_of(partner, run)
    assert {conversion_id: (row.kind, row.differences) for conversion_id, row in rows.items()} == {
        cid(1): ("matched", {}),
        cid(2): ("amount_differs", {"usd_earning": ["4.67", "5.62"]}),
        cid(3): ("missing_here", {}),
    }
    assert run_missing_record(partner=partner, run=run) == {"recorded": 1}
    recovered = partner_rows(partner).get(conversion_id=cid(3))
    assert (recovered.usd_sale_amount, recovered.usd_earning, recovered.sub_id) == (
        Decimal("93.47"),
        Decimal("4.67"),
        "s3",
    )
    assert (recovered.currency, recovered.payout_local) == (None, None)  # the report does not say them

    assert client.get(ENDPOINT + urlencode(postback(3))).json()["status"] == "duplicate"


@pytest.mark.parametrize("backend", ["postgres"])
def test_a_partner_day_is_read_from_the_network_days_that_cover_it(client, involve, clock):
    # The partner's day is UTC's; the network's days are GMT+8: 2025-03-01 UTC is
    # 2025-03-01 08:00 .. 2025-03-02 08:00 there.
    for number, moment in ((1, "2025-02-28 23:30:00"), (2, "2025-03-01 00:30:00"), (3, "2025-03-01 23:30:00")):
        sent = postback(number, datetime_conversion=moment)
        assert client.get(ENDPOINT + urlencode(sent)).json()["status"] == "success"
    report = [
        record(1, datetime_conversion="2025-03-01 07:30:00"),  # the partner's previous day
        record(2, datetime_conversion="2025-03-01 08:30:00"),
        record(3, datetime_conversion="2025-03-02 07:30:00"),  # the next network day, the same partner day
        record(4, datetime_conversion="2025-03-02 08:30:00"),  # the partner's next day
    ]
    fake = FakeInvolveAsia(report, key=KEY, secret=SECRET, clock=clock)
    try:
        run = reconciliation_run(source=served_by(fake, involve), date_from=DAY, date_to=DAY)
    finally:
        fake.stop()

    ranges = {(form["start_date"], form["end_date"]) for path, form in fake.requests if "range" in path}
    assert ranges == {("2025-03-01", "2025-03-02")}
    assert {conversion_id: row.kind for conversion_id, row in rows_of(involve, run).items()} == {
        cid(2): "matched",
        cid(3): "matched",
    }
    assert run.report_rows == 2


# --- preview -------------------------------------------------------------------------------


def test_the_preview_reads_the_first_page_of_the_last_seven_days_onto_our_fields(clock):
    today = timezone.now().astimezone(KL).date()
    recent = [record(n, datetime_conversion=f"{today} 0{n}:00:00") for n in range(1, 8)]
    fake = FakeInvolveAsia(
        [record(99, datetime_conversion=f"{today - datetime.timedelta(days=7)} 12:00:00"), *recent],
        key=KEY,
        secret=SECRET,
        clock=clock,
    )
    try:
        source = api_source(seed_partner(), base_url=fake.base_url, api_key=KEY, api_secret=SECRET)
        preview = source_preview(source=source, limit=3)
    finally:
        fake.stop()

    assert preview["error"] == ""
    assert (preview["date_from"], preview["date_to"], preview["count"]) == (
        str(today - datetime.timedelta(days=6)),
        str(today),
        7,
    )
    assert [path for path, _form in fake.requests] == ["/api/authenticate", "/api/conversions/range"]
    assert fake.requests[1][1]["limit"] == "3"
    first = preview["records"][0]
    assert first["ours"]["conversion_id"] == "778800001"
    assert first["ours"]["payout_local"] == "20.79" and first["ours"]["sub_id"] == "s1"
    assert first["unread"]["base_payout"] == "18.79" and first["errors"] == {}
    assert len(preview["records"]) == 3


def test_the_preview_says_why_it_cannot_read(clock):
    fake = FakeInvolveAsia([], key=KEY, secret=SECRET, clock=clock)
    try:
        wrong = api_source(seed_partner(), base_url=fake.base_url, api_key=KEY, api_secret="wrong-secret-0001")
        refused = source_preview(source=wrong)
        busy = api_source(seed_partner(), base_url=fake.base_url, api_key=KEY, api_secret=SECRET)
        window = sources.account_window(clock=clock, base_url=fake.base_url, api_key=KEY)
        for _ in range(59):  # with the refused authentication: the account's minute is used up
            window.release(window.acquire(limit=60))
        in_use = source_preview(source=busy)
    finally:
        fake.stop()

    assert refused["error"] == "authentication failed: HTTP 401: Invalid key or secret"
    assert refused["records"] == [] and "wrong-secret-0001" not in str(refused)
    assert in_use["error"].startswith("the account's 60 requests per minute are in use")
    assert len(fake.requests) == 1
    csv = ReportSource(partner=seed_partner(), name="Monthly CSV", kind="csv")
    assert source_preview(source=csv)["error"] == "a CSV source has no API to read: upload its report with a run"
