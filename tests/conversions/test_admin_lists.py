"""The conversions list and a conversion's page with the data partners really send: the
originals by default with a toggle to the other rows, the error of an invalid postback
where it is seen first, ISO moments with their zone named, and cells that keep a long
value whole in their title instead of widening the table."""

import re
from datetime import UTC, datetime
from decimal import Decimal
from html import unescape

from django.db import connections
from django.test.utils import CaptureQueriesContext

from conversions.models import PartnerConversion
from tests.conversions.test_admin import LIST_URL, listed_ids, page_text

MOMENT = datetime(2026, 12, 6, 20, 13, 5, tzinfo=UTC)
LONG = "Zalora_SG_CPS_AppInstall_2025Q1_" + "x" * 28  # 60 characters, no space
ERROR = "usd_sale_amount: 'abc' is not a number; " * 6


def add(partner, **fields) -> PartnerConversion:
    fields.setdefault("received_at", MOMENT)
    fields.setdefault("is_processed", not fields.get("is_duplicate") and not fields.get("processing_error"))
    return PartnerConversion.objects.using(partner.database_alias).create(partner_id=partner.pk, **fields)


def seed(partner) -> dict[str, PartnerConversion]:
    original = add(partner, conversion_id="A1", offer_name=LONG, offer_id="77", sub_id=LONG, click_id=LONG)
    return {
        "original": original,
        "duplicate": add(partner, conversion_id="A1", is_duplicate=True, duplicate_of=original),
        "invalid": add(partner, conversion_id="", processing_error=ERROR, sub_id="s-9"),
    }


def toggle(html: str) -> dict[str, tuple[str, bool]]:
    """The toggle's choices: label -> (link, selected)."""
    nav = re.search(r'<nav id="rows-toggle".*?</nav>', html, re.S).group(0)
    return {
        label: (unescape(href), bool(selected))
        for href, selected, label in re.findall(
            r'<a href="([^"]*)" data-rows="[a-z]+"( class="selected")?[^>]*>([^<]*)</a>', nav
        )
    }


def test_the_list_shows_originals_unless_the_toggle_asks_for_other_rows(analyst_client, involve):
    seed(involve)
    base = f"{LIST_URL}?partner=involve_asia"
    first = analyst_client.get(base).content.decode()
    assert listed_ids(analyst_client.get(base)) == ["A1"]
    choices = toggle(first)
    assert list(choices) == ["Originals", "Duplicates", "Invalid", "All rows"]
    assert choices["Originals"][1] and not choices["All rows"][1]
    assert all("partner=involve_asia" in link for link, _ in choices.values())
    assert listed_ids(analyst_client.get(base + "&rows=duplicates")) == ["A1"]
    assert "pc-outcome" not in analyst_client.get(base + "&rows=duplicates").content.decode()  # one kind: no column
    assert listed_ids(analyst_client.get(base + "&rows=invalid")) == ["-"]
    assert sorted(listed_ids(analyst_client.get(base + "&rows=all"))) == ["-", "A1", "A1"]
    # A link of before the toggle filters on the kind itself: it lists what it asks for, and
    # the toggle's links leave that filter behind.
    bookmarked = analyst_client.get(base + "&has_error=invalid")
    assert listed_ids(bookmarked) == ["-"]
    assert "has_error" not in toggle(bookmarked.content.decode())["Originals"][0]
    assert listed_ids(analyst_client.get(base + "&is_duplicate__exact=1")) == ["A1"]
    refused = analyst_client.get(base + "&rows=everything")
    assert refused.status_code == 400
    assert "rows: 'everything' is not one of originals, duplicates, invalid, all" in page_text(refused)


def test_the_originals_view_counts_no_more_rows_than_before(analyst_client, involve):
    seed(involve)
    with CaptureQueriesContext(connections[involve.database_alias]) as queries:
        assert analyst_client.get(f"{LIST_URL}?partner=involve_asia").status_code == 200
    counts = [q["sql"] for q in queries.captured_queries if "COUNT(" in q["sql"].upper()]
    assert counts and all("LIMIT" in sql.upper() for sql in counts), counts  # capped, never the whole table


def test_moments_are_iso_with_their_zone_named_and_filters_take_iso_days(analyst_client, involve):
    rows = seed(involve)
    base = f"{LIST_URL}?partner=involve_asia"
    listing = analyst_client.get(base).content.decode()
    assert (
        '<span title="2026-12-06 20:13:05 UTC"><span class="pc-day">2026-12-06</span> '
        '<span class="pc-time">20:13:05</span></span>'
    ) in listing
    assert re.search(r"Received \(UTC\)", listing) and re.search(r"Converted \(UTC\)", listing)
    assert 'type="date"' not in listing  # the browser's locale would write 12/06/2026
    for name in ("received_at__range_from", "conversion_datetime__range_to"):
        assert re.search(rf'<input type="text" name="{name}" value="" placeholder="YYYY-MM-DD" pattern=', listing)
    filtered = analyst_client.get(base + "&received_at__range_from=2026-12-06").content.decode()
    assert 'name="received_at__range_from" value="2026-12-06"' in filtered
    page = analyst_client.get(f"{LIST_URL}{rows['original'].pk}/change/?partner=involve_asia")
    text = page_text(page)
    assert "Received at: 2026-12-06 20:13:05 UTC" in text or "Received at 2026-12-06 20:13:05 UTC" in text
    assert "p.m." not in text and "Dec." not in text


def test_the_error_of_an_invalid_postback_is_in_the_list_and_first_on_its_page(analyst_client, involve):
    rows = seed(involve)
    base = f"{LIST_URL}?partner=involve_asia"
    invalid = analyst_client.get(base + "&rows=invalid").content.decode()
    cell = re.search(r'<td class="field-error_label">(.*?)</td>', invalid, re.S).group(1)
    assert unescape(cell) == f'<span class="pc-error" title="{ERROR}">{ERROR}</span>'
    every = analyst_client.get(base + "&rows=all").content.decode()
    assert re.search(r'<td class="field-outcome_cell"><span class="pc-badge pc-outcome-invalid">invalid</span> '
                     r'<span class="pc-error" title="usd_sale_amount', every)  # fmt: skip
    page = analyst_client.get(f"{LIST_URL}{rows['invalid'].pk}/change/?partner=involve_asia").content.decode()
    top = page.index('id="processing-error"')
    assert top < page.index("<fieldset") and ERROR.strip() in unescape(page[top : page.index("</div>", top)])
    original = analyst_client.get(f"{LIST_URL}{rows['original'].pk}/change/?partner=involve_asia").content.decode()
    assert 'id="processing-error"' not in original


def test_long_values_stay_whole_in_titles_and_amounts_read_as_numbers(analyst_client, involve):
    add(involve, conversion_id="B-1", sub_id=LONG, click_id=LONG, usd_sale_amount=Decimal("1234567.89"),
        usd_earning=Decimal("123456.70"), offer_name=LONG)  # fmt: skip
    listing = analyst_client.get(f"{LIST_URL}?partner=involve_asia").content.decode()
    for column in ("sub_id_label", "click_id_label"):
        assert f'<td class="field-{column}"><span title="{LONG}">{LONG}</span></td>' in listing
    assert f'<td class="field-offer_label"><span title="{LONG}">{LONG}</span></td>' in listing
    assert '<td class="field-sale_label">1,234,567.89</td>' in listing
    assert '<td class="field-earning_label">123,456.70</td>' in listing
    headers = re.findall(r'<th scope="col" class="[^"]*column-(\w+)[^"]*">.*?<(?:a|span)[^>]*>([^<]+)<', listing, re.S)
    assert ("sale_label", "Sale $") in headers and ("earning_label", "Earning $") in headers
    assert "table-layout: fixed" in listing  # the columns share the list's width, never more


def test_clearing_a_typed_filter_keeps_the_partner(analyst_client, involve, rector):
    add(rector, conversion_id="R-1", offer_id="9")
    page = analyst_client.get(f"{LIST_URL}?partner=rector&offer_id=9&received_at__range_from=2026-01-01")
    html = unescape(page.content.decode())
    clears = re.findall(r'<a href="([^"]*)">&times; clear</a>', page.content.decode())
    assert len(clears) == 2 and all("partner=rector" in unescape(link) for link in clears), clears
    assert listed_ids(page) == ["R-1"] and "partner=rector" in html


def test_the_search_in_every_partner_links_to_every_kind_of_row_and_writes_iso(analyst_client, involve):
    seed(involve)
    response = analyst_client.get("/admin/partners/partner/search/", {"q": "A1"})
    rows = response.context["rows"]
    assert len(rows) == 2 and all("rows=all" in row["list_url"] for row in rows)
    assert sorted(listed_ids(analyst_client.get(rows[0]["list_url"]))) == ["A1", "A1"]
    assert "2026-12-06 20:13:05 UTC" in response.content.decode()
