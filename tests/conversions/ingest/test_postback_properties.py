"""Property-based: whatever arrives at the postback endpoint, no 5xx and no stored row
that breaks the model's rules (Hypothesis, bounded so it runs in seconds)."""

import json
from decimal import Decimal
from urllib.parse import quote_from_bytes, urlencode

import pytest
from django.db.models import Max
from django.utils import timezone
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from conversions.models import ConversionChange, PartnerConversion
from partners.mapping import CANONICAL_FIELDS
from tests.conftest import partner_rows

URL = "/partner/involve/event"
SECRET = "property-secret-0123456789"
KNOWN_NAMES = [*CANONICAL_FIELDS, "aff_sub", "aff_sub2", "aff_sub3", "usd_payout", "datetime_conversion", "token"]
TRICKY_VALUES = [
    "", " ", "NaN", "-Infinity", "1e999", "-0", "0.005", "99999999999999.99", "10000000000000.00", "1,5",
    "2025-01-15", "2025-13-45", "1969-12-31", "3000-01-01 00:00:00", "2025-01-15T10:00:00+14:00", "9999999999",
    "\x00", "\ud800", "é" * 60, "<script>", "' OR 1=1 --", "%00", "1" * 300, SECRET, f"x{SECRET}x",
]  # fmt: skip

names = st.sampled_from(KNOWN_NAMES) | st.text(max_size=40)
values = (
    st.sampled_from(TRICKY_VALUES)
    | st.text(max_size=80)
    | st.integers(min_value=-(10**20), max_value=10**20).map(str)
    | st.floats(allow_nan=True, allow_infinity=True).map(repr)
    | st.decimals(allow_nan=False, allow_infinity=False, places=4).map(str)
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40) | values,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=10), children, max_size=3),
    max_leaves=6,
)
pairs = st.lists(st.tuples(names, values), max_size=12)
header_names = st.from_regex(r"\A[A-Za-z][A-Za-z0-9-]{0,20}\Z")
header_names = header_names | st.sampled_from(["X-Postback-Token", "X-Postback-Signature", "Content-Length"])
header_values = st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=60) | st.just(SECRET)


@st.composite
def postbacks(draw):
    """(method, query string, body, content type, extra WSGI headers)."""
    query_pairs = draw(pairs)
    # Most real postbacks carry an id (and, for a secured partner, the token): reach the ingest often.
    if draw(st.integers(0, 3)):
        query_pairs.insert(0, ("conversion_id", draw(st.sampled_from(["c1", "c2"]) | st.text(min_size=1, max_size=60))))
    if draw(st.booleans()):
        query_pairs.append(("token", SECRET))
    query_style = draw(st.sampled_from(["utf-8", "latin-1", "raw-bytes"]))
    if query_style == "raw-bytes":
        query = "&".join(
            quote_from_bytes(draw(st.binary(max_size=20))) + "=" + quote_from_bytes(draw(st.binary(max_size=30)))
            for _ in range(draw(st.integers(0, 5)))
        )
    else:
        query = urlencode(query_pairs, encoding=query_style, errors="replace")
    method = draw(st.sampled_from(["GET", "POST"]))
    body, content_type = b"", "application/octet-stream"
    if method == "POST":
        kind = draw(st.sampled_from(["form", "json", "json-any", "bytes", "empty"]))
        if kind == "form":
            body = urlencode(draw(pairs), errors="replace").encode()
            content_type = "application/x-www-form-urlencoded"
        elif kind == "json":
            body = json.dumps(dict(draw(st.lists(st.tuples(names, json_values), max_size=8)))).encode()
            content_type = draw(st.sampled_from(["application/json", "application/vnd.partner+json"]))
        elif kind == "json-any":
            body = json.dumps(draw(json_values)).encode()
            content_type = "application/json"
        elif kind == "bytes":
            body = draw(st.binary(max_size=200))
            content_type = draw(st.sampled_from(["text/plain", "application/json", "multipart/form-data", "", "x/y"]))
    headers = {
        "HTTP_" + name.upper().replace("-", "_"): value
        for name, value in draw(st.dictionaries(header_names, header_values, max_size=4)).items()
    }
    if draw(st.booleans()):
        headers["HTTP_X_FORWARDED_FOR"] = draw(st.sampled_from(["203.0.113.9", "2001:db8::1", "junk, 1.2.3.4", ""]))
    return method, query, body, content_type, headers


def assert_row_keeps_the_rules(row: PartnerConversion) -> None:
    # A rejected row may lack a valid conversion_id: that is why it was rejected.
    exclude = ["conversion_id"] if row.processing_error is not None else []
    # A postback with no parameters (or headers) at all is kept as received: an empty object.
    exclude += [name for name in ("raw_data", "request_headers") if getattr(row, name) == {}]
    row.full_clean(exclude=exclude, validate_unique=False, validate_constraints=False)
    for amount in (row.usd_sale_amount, row.usd_earning):
        assert amount is None or (abs(amount) < Decimal("1e13") and amount == amount.quantize(Decimal("0.01")))
    assert row.conversion_datetime is None or timezone.is_aware(row.conversion_datetime)
    assert timezone.is_aware(row.received_at)
    assert isinstance(row.raw_data, dict) and isinstance(row.request_headers, dict)
    if row.processing_error is None:
        assert row.conversion_id and row.is_processed != row.is_duplicate
        assert (row.duplicate_of_id is not None) == row.is_duplicate


@pytest.mark.parametrize("secured", [False, True], ids=["open", "secret"])
def test_random_postbacks_never_5xx_nor_store_a_broken_row(client, make_partner, secured, settings):
    # Lower limits so random input crosses them too.
    settings.POSTBACK_MAX_PARAMS = 12
    settings.POSTBACK_MAX_PARAM_VALUE_LENGTH = 250
    settings.POSTBACK_MAX_BODY_BYTES = 400
    partner = make_partner("involve_asia", max_daily_requests=0, postback_secret=SECRET if secured else "")

    @hypothesis_settings(
        max_examples=150,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(postbacks())
    def check(postback):
        method, query, body, content_type, headers = postback
        last_id = partner_rows(partner).aggregate(last=Max("id"))["last"] or 0
        response = client.generic(method, URL, data=body, content_type=content_type, QUERY_STRING=query, **headers)
        assert response.status_code < 500, response.content
        payload = response.json()
        assert payload["status"] in {"success", "duplicate", "updated", "error"}
        new_rows = list(partner_rows(partner).filter(id__gt=last_id))
        if response.status_code == 200 and (payload["status"] == "updated" or payload.get("note")):
            # an update (or a stale change) lands in the original's history, not as a new row
            assert new_rows == []
            assert (
                ConversionChange.objects.using(partner.database_alias)
                .filter(conversion_id=payload["conversion"]["id"])
                .exists()
            )
        elif response.status_code == 200:
            assert len(new_rows) == 1 and new_rows[0].processing_error is None
        if response.status_code in (403, 413, 429) or payload.get("reason") not in (None, "invalid_data"):
            assert new_rows == []
        for row in new_rows:
            assert_row_keeps_the_rules(row)
        if secured:  # the partner's secret is never stored nor echoed, wherever it was sent
            assert SECRET not in response.content.decode()
            for row in new_rows:
                assert SECRET not in json.dumps([row.raw_data, row.request_headers, row.processing_error])

    check()
