"""Every captured postback of every partner (tests/fixtures/<partner>/*.json), one test per
fixture: each postback, in order, must get its answer and leave its stored values."""

import json
from decimal import Decimal
from pathlib import Path

import pytest

from conversions.models import ORIGINAL, PartnerConversion
from tests.conftest import FIXTURES_DIR

FIXTURES = sorted(FIXTURES_DIR.glob("*/*.json"))


def stored_value(row: PartnerConversion, name: str) -> object:
    if name.startswith("raw_data."):
        return row.raw_data.get(name.removeprefix("raw_data."))
    value = getattr(row, name)
    if isinstance(value, Decimal):
        return str(value)
    return value.isoformat() if hasattr(value, "isoformat") else value


@pytest.mark.parametrize("path", FIXTURES, ids=lambda path: f"{path.parent.name}/{path.stem}")
def test_captured_postbacks(client, make_partner, path: Path):
    partner = make_partner(path.parent.name)
    rows = PartnerConversion.objects.using(partner.database_alias)
    for number, postback in enumerate(json.loads(path.read_text())["postbacks"], start=1):
        url = f"/partner/{partner.endpoint_path.strip('/')}"
        if postback.get("method", "GET") == "POST":
            response = client.post(url, postback["body"], content_type=postback["content_type"])
        else:
            response = client.get(f"{url}?{postback['query']}")
        body = response.json()
        expected = postback["answer"]
        assert response.status_code == expected["http"], (number, body)
        assert {key: body.get(key) for key in expected if key != "http"} == {
            key: value for key, value in expected.items() if key != "http"
        }, number
        if "stored" in postback:
            original = rows.filter(ORIGINAL, conversion_id=body["conversion"]["conversion_id"]).get()
            assert {name: stored_value(original, name) for name in postback["stored"]} == postback["stored"], number
        if "rejected" in postback:
            rejected = rows.get(pk=body["conversion"]["id"])
            assert rejected.processing_error
            assert {name: stored_value(rejected, name) for name in postback["rejected"]} == postback["rejected"]
