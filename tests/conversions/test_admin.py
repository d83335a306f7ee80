"""The conversions admin: per-partner lists, filters, read-only detail, CSV export, reprocess."""

import csv
import io
import re
from html import unescape

import pytest
from django.contrib.admin.models import LogEntry

from conversions.ingest.reprocess import conversion_reprocess
from conversions.models import PartnerConversion
from conversions.outcomes import Outcome
from partners.models import Partner
from tests.conftest import partner_rows

LIST_URL = "/admin/conversions/partnerconversion/"


def listed_ids(response) -> list[str]:
    return re.findall(r'<th class="field-conversion_id"><a href="[^"]*">([^<]*)</a>', response.content.decode())


def page_text(response) -> str:
    return re.sub(r"\s+", " ", unescape(re.sub(r"<[^>]+>", " ", response.content.decode())))


def post(client, path: str) -> None:
    response = client.get(path)
    assert response.status_code in (200, 400), response.content


def test_list_shows_only_the_chosen_partners_database(analyst_client, involve, rector):
    post(analyst_client, "/partner/involve/event?conversion_id=IA-1&aff_sub=s1")
    post(analyst_client, "/partner/rector/event?conversion_id=R-1&sub_id=s2")

    first = analyst_client.get(LIST_URL)
    assert first.status_code == 302 and first.url == f"{LIST_URL}?partner=involve_asia"
    response = analyst_client.get(f"{LIST_URL}?partner=involve_asia")
    assert response.status_code == 200
    assert listed_ids(response) == ["IA-1"]
    assert "Conversions of InvolveAsia" in page_text(response)
    assert listed_ids(analyst_client.get(f"{LIST_URL}?partner=rector")) == ["R-1"]
    assert analyst_client.get(f"{LIST_URL}?partner=nobody").status_code == 404


def test_filters_search_and_links_keep_the_partner(analyst_client, involve):
    for query in (
        "conversion_id=A1&aff_sub=alpha-1&offer_id=7&conversion_status=approved",
        "conversion_id=A1&aff_sub=alpha-2",  # duplicate
        "conversion_id=B2&aff_sub3=clk-99&offer_id=8&conversion_status=pending&datetime_conversion=2024-03-05",
        "aff_sub=no-id",  # rejected: no conversion_id
    ):
        post(analyst_client, f"/partner/involve/event?{query}")
    base = f"{LIST_URL}?partner=involve_asia"
    assert sorted(listed_ids(analyst_client.get(base))) == ["A1", "B2"]  # originals unless asked
    assert sorted(listed_ids(analyst_client.get(base + "&rows=all"))) == ["-", "A1", "A1", "B2"]
    # Links filtering on the row's kind itself list what they ask for.
    assert listed_ids(analyst_client.get(base + "&is_duplicate__exact=1")) == ["A1"]
    assert listed_ids(analyst_client.get(base + "&has_error=invalid")) == ["-"]
    assert sorted(listed_ids(analyst_client.get(base + "&has_error=no"))) == ["A1", "A1", "B2"]
    assert listed_ids(analyst_client.get(base + "&offer_id=8")) == ["B2"]
    assert listed_ids(analyst_client.get(base + "&status=approved")) == ["A1"]
    assert listed_ids(analyst_client.get(base + "&conversion_datetime__year=2024")) == ["B2"]
    in_range = base + "&conversion_datetime__range_from=2024-03-01&conversion_datetime__range_to=2024-03-05"
    assert listed_ids(analyst_client.get(in_range)) == ["B2"]  # the end day is included
    assert listed_ids(analyst_client.get(base + "&conversion_datetime__range_to=2024-03-04")) == []
    refused = analyst_client.get(base + "&conversion_datetime__range_from=soon")
    assert refused.status_code == 400
    assert "conversion_datetime__range_from: 'soon' is not a date (YYYY-MM-DD)" in page_text(refused)
    assert listed_ids(analyst_client.get(base + "&q=B2")) == ["B2"]  # conversion_id exact
    assert listed_ids(analyst_client.get(base + "&q=B")) == []  # ...not a prefix
    assert listed_ids(analyst_client.get(base + "&q=clk-")) == ["B2"]  # click_id prefix
    assert sorted(listed_ids(analyst_client.get(base + "&q=alpha&rows=all"))) == ["A1", "A1"]  # sub_id prefix
    assert listed_ids(analyst_client.get(base + "&q=alpha")) == ["A1"]  # the original alone by default
    filtered = analyst_client.get(base + "&has_error=no").content.decode()
    # every filter link still names the partner
    links = re.findall(r'href="(\?[^"]*)"', filtered)
    assert links and all("partner=involve_asia" in unescape(link) for link in links if "has_error" in link)


def test_detail_page_opens_the_row_from_the_partners_database(analyst_client, involve, rector):
    # the same id in two partner databases
    for partner, conversion_id, sub_id in ((involve, "IA-1", "from-involve"), (rector, "R-1", "from-rector")):
        PartnerConversion.objects.using(partner.database_alias).create(
            pk=500, partner_id=partner.pk, conversion_id=conversion_id, sub_id=sub_id, is_processed=True
        )
    involve_pk = rector_pk = 500
    involve_page = page_text(analyst_client.get(f"{LIST_URL}{involve_pk}/change/?partner=involve_asia"))
    rector_page = page_text(analyst_client.get(f"{LIST_URL}{rector_pk}/change/?partner=rector"))
    assert "IA-1" in involve_page and "from-involve" in involve_page and "R-1" not in involve_page
    assert "R-1" in rector_page and "from-rector" in rector_page and "IA-1" not in rector_page
    # opened from the list, the partner travels in _changelist_filters
    via_list = analyst_client.get(f"{LIST_URL}{rector_pk}/change/?_changelist_filters=partner%3Drector")
    assert "from-rector" in page_text(via_list)


def test_duplicate_links_to_its_original_in_the_same_database(analyst_client, rector):
    post(analyst_client, "/partner/rector/event?conversion_id=R-1")
    post(analyst_client, "/partner/rector/event?conversion_id=R-1")
    original, duplicate = partner_rows(rector)
    page = analyst_client.get(f"{LIST_URL}{duplicate.pk}/change/?partner=rector").content.decode()
    assert f'href="{LIST_URL}{original.pk}/change/?partner=rector">#{original.pk}</a>' in page


@pytest.mark.parametrize("who", ["root", "manager", "analyst"])
def test_nobody_can_add_change_or_delete_a_conversion(client, users, rector, who):
    client.force_login(users[who])
    post(client, "/partner/rector/event?conversion_id=R-1&usd_earning=5")
    row = partner_rows(rector).get()
    change_url = f"{LIST_URL}{row.pk}/change/?partner=rector"
    page = client.get(change_url)
    assert page.status_code == 200 and 'name="usd_earning"' not in page.content.decode()
    assert client.post(change_url, {"conversion_id": "R-1", "usd_earning": "500"}).status_code == 403
    assert client.get(f"{LIST_URL}add/?partner=rector").status_code == 403
    assert client.post(f"{LIST_URL}{row.pk}/delete/?partner=rector", {"post": "yes"}).status_code == 403
    listing = client.get(f"{LIST_URL}?partner=rector").content.decode()
    assert 'value="delete_selected"' not in listing
    assert str(partner_rows(rector).get().usd_earning) == "5.00"


def test_export_streams_the_filtered_rows_as_csv(analyst_client, involve):
    post(analyst_client, "/partner/involve/event?conversion_id=E1&aff_sub=%3DHYPERLINK(1)&usd_sale_amount=10.5")
    post(analyst_client, "/partner/involve/event?conversion_id=E2&offer_id=9")
    post(analyst_client, "/partner/involve/event?conversion_id=E2&offer_id=9")
    response = analyst_client.post(
        f"{LIST_URL}?partner=involve_asia&offer_id=9&rows=all",
        {"action": "export_csv", "select_across": "1", "index": "0", "_selected_action": ["1"]},
    )
    assert response.status_code == 200
    assert response.streaming
    assert response["Content-Disposition"] == 'attachment; filename="involve_asia-conversions.csv"'
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert [(r["conversion_id"], r["is_duplicate"], r["outcome"]) for r in rows] == [
        ("E2", "true", "duplicate"),
        ("E2", "false", "original"),
    ]

    first = partner_rows(involve).get(conversion_id="E1")
    selected = analyst_client.post(
        f"{LIST_URL}?partner=involve_asia",
        {"action": "export_csv", "index": "0", "_selected_action": [str(first.pk)]},
    )
    (row,) = csv.DictReader(io.StringIO(b"".join(selected.streaming_content).decode()))
    assert (row["conversion_id"], row["usd_sale_amount"]) == ("E1", "10.50")
    assert row["sub_id"] == "'=HYPERLINK(1)"  # no formula in a spreadsheet


def test_reprocess_turns_rejected_rows_into_originals_and_duplicates(manager_client, involve):
    post(manager_client, "/partner/involve/event?conversion_id=T1")  # original
    post(manager_client, "/partner/involve/event?tx=T1")  # rejected: no conversion_id
    post(manager_client, "/partner/involve/event?tx=T1&amount=3")  # rejected; carries an amount T1 lacks
    post(manager_client, "/partner/involve/event?tx=T2&amount=4")  # rejected
    post(manager_client, "/partner/involve/event?tx=T3&usd_payout=abc")  # rejected, stays so
    assert partner_rows(involve).filter(processing_error__isnull=False).count() == 4

    # the account manager_client fixes the mapping: the partner sends its id as `tx`
    Partner.objects.filter(pk=involve.pk).update(
        parameter_mapping={**involve.parameter_mapping, "conversion_id": "tx", "usd_sale_amount": "amount"}
    )
    response = manager_client.post(
        f"{LIST_URL}?partner=involve_asia&has_error=invalid",
        {"action": "reprocess_rejected", "select_across": "1", "index": "0", "_selected_action": ["1"]},
        follow=True,
    )
    assert (
        "Reprocessed 4 invalid postback(s): 1 original, 1 duplicate, 1 update of an original, 1 still invalid."
        in page_text(response)
    )
    rows = {
        (row.raw_data.get("tx"), row.raw_data.get("amount")): row
        for row in partner_rows(involve).filter(raw_data__has_key="tx")
    }
    original = partner_rows(involve).get(conversion_id="T1", is_duplicate=False)
    for key in [("T1", None), ("T1", "3")]:
        assert (rows[key].outcome, rows[key].duplicate_of_id, rows[key].conversion_id) == (
            "duplicate",
            original.pk,
            "T1",
        )
    # the second carried an amount the original lacked: applied as an update, as a fresh postback would be
    assert str(original.usd_sale_amount) == "3.00"
    rows["T2"] = rows[("T2", "4")]
    rows["T3"] = rows[("T3", None)]
    assert rows["T2"].outcome == "original" and rows["T2"].conversion_id == "T2"
    assert str(rows["T2"].usd_sale_amount) == "4.00" and rows["T2"].is_processed
    assert rows["T3"].outcome == "rejected" and "usd_payout: 'abc' is not a number" in rows["T3"].processing_error
    assert original.outcome == "original"
    entry = LogEntry.objects.get(object_id=str(involve.pk))
    assert entry.get_change_message().startswith("Reprocessed 4 invalid postback(s)")
    assert entry.user.username == "manager"


def test_reprocess_stopped_by_the_configuration_database_keeps_the_summary_of_what_it_did(
    manager_client, involve, monkeypatch
):
    from django.db import OperationalError

    from publishers import deliveries as deliveries_module
    from publishers.models import Publisher
    from publishers.selectors import PublisherDirectory

    assert manager_client.get("/partner/involve/event?conversion_id=T1").status_code == 200
    assert manager_client.get("/partner/involve/event?tx=T2").status_code == 400  # rejected (older)
    assert manager_client.get("/partner/involve/event?tx=T1").status_code == 400  # rejected (newer: first)
    Partner.objects.filter(pk=involve.pk).update(parameter_mapping={**involve.parameter_mapping, "conversion_id": "tx"})
    monkeypatch.setattr(deliveries_module, "publisher_directory", PublisherDirectory())  # not loaded yet

    def down(*args, **kwargs):
        raise OperationalError("connection to server at 127.0.0.1, port 5432 failed: Connection refused")

    monkeypatch.setattr(Publisher.objects, "filter", down)
    response = manager_client.post(
        f"{LIST_URL}?partner=involve_asia&has_error=invalid",
        {"action": "reprocess_rejected", "select_across": "1", "index": "0", "_selected_action": ["1"]},
        follow=True,
    )
    shown = re.findall(r'<li class="(?:error|success|warning)">(.*?)</li>', response.content.decode())
    # T1's rejected row became a duplicate (it needs no publishers) before T2 needed them.
    assert partner_rows(involve).filter(processing_error__isnull=False).count() == 1
    assert any(message.startswith("Reprocessing stopped: database &#x27;default&#x27;") for message in shown), shown
    assert any(message.startswith("Reprocessed 1 invalid postback(s)") for message in shown), shown
    assert LogEntry.objects.filter(object_id=str(involve.pk)).exists()


def test_reprocess_matches_a_fresh_postback(involve, client, live_db):
    # T1 already exists as an original; a rejected row carrying T1 becomes its duplicate
    post(client, "/partner/involve/event?conversion_id=T1")
    post(client, "/partner/involve/event?tx=T1")
    Partner.objects.filter(pk=involve.pk).update(parameter_mapping={"conversion_id": "tx"})
    partner = Partner.objects.get(pk=involve.pk)
    rejected = partner_rows(involve).get(processing_error__isnull=False)
    result = conversion_reprocess(partner=partner, conversion=rejected)
    original = partner_rows(involve).get(conversion_id="T1", is_duplicate=False)
    assert result.outcome is Outcome.DUPLICATE
    stored = PartnerConversion.objects.using(involve.database_alias).get(pk=rejected.pk)
    assert (stored.is_duplicate, stored.duplicate_of_id, stored.processing_error) == (True, original.pk, None)
    # a second run changes nothing
    assert conversion_reprocess(partner=partner, conversion=stored).outcome is Outcome.DUPLICATE
    assert partner_rows(involve).count() == 2


def test_analyst_cannot_reprocess(analyst_client, involve):
    post(analyst_client, "/partner/involve/event?aff_sub=x")
    listing = analyst_client.get(f"{LIST_URL}?partner=involve_asia").content.decode()
    assert 'value="export_csv"' in listing and 'value="reprocess_rejected"' not in listing
    response = analyst_client.post(
        f"{LIST_URL}?partner=involve_asia",
        {"action": "reprocess_rejected", "select_across": "1", "index": "0", "_selected_action": ["1"]},
    )
    assert partner_rows(involve).get().processing_error is not None
    assert response.status_code in (200, 302)


def test_big_lists_count_at_most_cap_rows(analyst_client, rector, monkeypatch):
    from conversions.admin.conversions import CappedCountPaginator, PartnerConversionAdmin

    monkeypatch.setattr(CappedCountPaginator, "CAP", 3)
    monkeypatch.setattr(PartnerConversionAdmin, "list_per_page", 2)
    for index in range(7):  # s0: 4 rows, s1: 3 rows
        post(analyst_client, f"/partner/rector/event?conversion_id=C{index}&sub_id=s{index % 2}")
    listing = analyst_client.get(f"{LIST_URL}?partner=rector&q=s0")
    assert len(listed_ids(listing)) == 2
    assert "More than 3 rows match; the newest are listed." in page_text(listing)
    small = analyst_client.get(f"{LIST_URL}?partner=rector&q=s1")
    assert len(listed_ids(small)) == 2 and "More than" not in page_text(small)
    assert "3 partner conversions" in page_text(small)


def test_date_hierarchy_offers_periods_between_first_and_last_row(analyst_client, rector):
    for day in ("2024-11-30", "2025-01-15", "2025-01-20"):
        post(analyst_client, f"/partner/rector/event?conversion_id=D{day}&conversion_datetime={day}")
    base = f"{LIST_URL}?partner=rector"
    years = analyst_client.get(base).content.decode()
    assert re.findall(r'class="toplinks">.*?</nav>', years, re.S)[0].count("conversion_datetime__year=") == 2
    months = page_text(analyst_client.get(base + "&conversion_datetime__year=2025"))
    assert "January 2025" in months and "February 2025" not in months
    days = analyst_client.get(base + "&conversion_datetime__year=2025&conversion_datetime__month=1")
    assert "January 15" in page_text(days) and "January 20" in page_text(days)
    assert sorted(listed_ids(days)) == ["D2025-01-15", "D2025-01-20"]
    one_day = analyst_client.get(
        base + "&conversion_datetime__year=2025&conversion_datetime__month=1&conversion_datetime__day=20"
    )
    assert listed_ids(one_day) == ["D2025-01-20"]


def test_an_unreachable_partner_database_is_a_message_not_a_500(analyst_client, live_db):
    partner = Partner.objects.create(
        partner_code="gone",
        partner_name="Gone",
        endpoint_path="/gone/event",
        database_name="gone_db",
        database_url="postgres://root@127.0.0.1:1/gone_db",
    )
    try:
        response = analyst_client.get(f"{LIST_URL}?partner=gone", follow=True)
        assert response.status_code == 200
        assert "The database of partner 'gone' cannot be read" in page_text(response)
        detail = analyst_client.get(f"{LIST_URL}1/change/?partner=gone", follow=True)
        assert detail.status_code == 200 and "This partner's database cannot be read" in page_text(detail)
        partners = analyst_client.get("/admin/partners/partner/")
        assert re.search(r'<td class="field-postbacks_today">unavailable</td>', partners.content.decode())
    finally:
        from infra.databases import partner_database_unregister

        partner_database_unregister(partner.database_alias)


def test_detail_page_shows_the_lifecycle_history_and_local_amounts(analyst_client, involve):
    from tests.conftest import fixture_queries

    created, approved = fixture_queries("involve_asia", "lifecycle_approve")[:2]
    post(analyst_client, f"/partner/involve/event?{created}")
    post(analyst_client, f"/partner/involve/event?{approved}")
    post(analyst_client, f"/partner/involve/event?{created}")  # a stale retry
    original = partner_rows(involve).get(is_duplicate=False)

    page = analyst_client.get(f"{LIST_URL}{original.pk}/change/?partner=involve_asia")
    text = page_text(page)
    history = re.search(r'<table id="conversion-history">.*?</table>', page.content.decode(), re.S).group(0)
    rows = re.findall(r"<tr><td>", history)
    assert len(rows) == 2
    assert "pending → approved" in unescape(history) and "approved → pending" in unescape(history)
    assert "usd_earning: 4.67 -> 4.94" in unescape(history)
    assert "not applied (stale: status 'pending' after 'approved' is not applied)" in unescape(history)
    assert "MYR" in text and "415.80" in text and "22.00" in text

    base = f"{LIST_URL}?partner=involve_asia"
    assert listed_ids(analyst_client.get(base + "&currency=myr")) == ["IA-900001"]
    assert listed_ids(analyst_client.get(base + "&currency=SGD")) == []
    assert listed_ids(analyst_client.get(base + "&status=approved")) == ["IA-900001"]
    assert listed_ids(analyst_client.get(base + "&status=pending")) == []


def test_offer_name_column_and_case_insensitive_searches(analyst_client, involve):
    for query in (
        "conversion_id=ACME-1&offer_name=Shopee%20ID%20(Media%20Buyers)%20-%20CPS&offer_id=77&aff_sub=RAMPUP-9",
        "conversion_id=acme-2&offer_name=Lazada%20MY",
        "conversion_id=B-3&offer_name=" + "Long%20" * 20 + "Offer",
    ):
        post(analyst_client, f"/partner/involve/event?{query}")
    base = f"{LIST_URL}?partner=involve_asia"
    listed = analyst_client.get(base)
    assert re.search(
        r'<td class="field-offer_label"><span title="Shopee ID \(Media Buyers\) - CPS \(#77\)">',
        listed.content.decode(),
    )
    assert "#77" in page_text(listed)
    assert listed_ids(analyst_client.get(base + "&q=acme-1")) == ["ACME-1"]  # conversion_id in any case
    assert listed_ids(analyst_client.get(base + "&q=ACME-2")) == ["acme-2"]
    assert listed_ids(analyst_client.get(base + "&q=acme")) == []  # ...whole, not a prefix
    assert listed_ids(analyst_client.get(base + "&q=shopee id")) == ["ACME-1"]  # offer name's start, any case
    assert listed_ids(analyst_client.get(base + "&q=LAZADA")) == ["acme-2"]
    assert listed_ids(analyst_client.get(base + "&q=" + "long%20" * 20 + "off")) == ["B-3"]  # past the indexed 64
    assert listed_ids(analyst_client.get(base + "&q=" + "long%20" * 20 + "xyz")) == []


def test_received_date_custom_range(analyst_client, involve):
    from datetime import UTC, datetime

    for conversion_id, received in (
        ("R-1", datetime(2025, 4, 1, 9, tzinfo=UTC)),
        ("R-2", datetime(2025, 4, 3, 9, tzinfo=UTC)),
    ):
        PartnerConversion.objects.using(involve.database_alias).create(
            partner_id=involve.pk, conversion_id=conversion_id, received_at=received, is_processed=True
        )
    base = f"{LIST_URL}?partner=involve_asia"
    page = analyst_client.get(base).content.decode()
    assert 'name="received_at__range_from"' in page and 'name="received_at__range_to"' in page
    assert listed_ids(analyst_client.get(base + "&received_at__range_from=2025-04-02")) == ["R-2"]
    assert listed_ids(analyst_client.get(base + "&received_at__range_to=2025-04-01")) == ["R-1"]
    refused = analyst_client.get(base + "&received_at__range_to=tomorrow")  # refused, not a 500
    assert refused.status_code == 400 and "'tomorrow' is not a date (YYYY-MM-DD)" in page_text(refused)
    assert 'href="/admin/conversions/partnerconversion/?partner=involve_asia"' in refused.content.decode()
