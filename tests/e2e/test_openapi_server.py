"""Real answers of the running server, one per outcome, against the OpenAPI schema it serves."""

import http.client
import json
from urllib.parse import urlsplit

import jsonschema
import pytest

from conversions.outcomes import Outcome
from tests.e2e.server import fetch, manage, running_server, service_env

pytestmark = pytest.mark.e2e


def openapi_to_json_schema(node):
    """OpenAPI 3.0 schema objects as JSON Schema (`nullable: true` -> a type that allows null)."""
    if isinstance(node, list):
        return [openapi_to_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    converted = {key: openapi_to_json_schema(value) for key, value in node.items() if key != "nullable"}
    if node.get("nullable"):
        if "type" in converted:
            converted["type"] = [converted["type"], "null"]
        elif "$ref" in converted or "allOf" in converted or "oneOf" in converted:
            converted = {"anyOf": [converted, {"type": "null"}]}
        if "enum" in converted:
            converted["enum"] = [*converted["enum"], None]
    return converted


def request(base: str, method: str, path: str, *, body: bytes = b"", headers: dict | None = None):
    parts = urlsplit(base)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    connection.request(method, path, body=body or None, headers=headers or {})
    response = connection.getresponse()
    status, text = response.status, response.read()
    connection.close()
    return status, json.loads(text)


def test_every_outcome_of_a_postback_matches_the_served_schema(tmp_path):
    env = service_env(
        DATABASE_URL=f"sqlite:///{tmp_path}/default.sqlite3",
        PARTNER_DATABASE_URL=f"sqlite:///{tmp_path}/{{name}}.sqlite3",
        POSTBACK_MAX_BODY_BYTES="2048",
    )
    assert manage(env, "init_partners").returncode == 0
    script = (
        "from partners.models import Partner\n"
        "Partner.objects.filter(partner_code='rector').update(postback_secret='s' * 20)\n"
        "Partner.objects.filter(partner_code='involve_asia').update(max_daily_requests=8)\n"
        "from partners.services import partner_create\n"
        "partner_create(partner_code='gone', partner_name='Gone', endpoint_path='/gone/event',"
        " database_name='gone_db', database_url='postgres://root@127.0.0.1:1/gone')\n"
    )
    assert manage(env, "shell", "-c", script).returncode == 0
    involve = "/partner/involve/event"
    with running_server(env, tmp_path / "server.log", workers=1, threads=4) as base:
        schema = fetch(base + "/api/schema/?format=json")[1]
        answers = {
            Outcome.SUCCESS: request(base, "GET", f"{involve}?conversion_id=o1&usd_payout=1"),
            Outcome.DUPLICATE: request(base, "GET", f"{involve}?conversion_id=o1&usd_payout=1"),
            Outcome.UPDATED: request(
                base, "GET", f"{involve}?conversion_id=o1&usd_payout=1&conversion_status=approved"
            ),
            Outcome.STALE: request(base, "GET", f"{involve}?conversion_id=o1&conversion_status=pending"),
            Outcome.INVALID: request(base, "GET", f"{involve}?conversion_id=o2&usd_payout=lots"),
            Outcome.REFUSED: request(base, "GET", f"{involve}?" + "&".join(f"p{i}=1" for i in range(120))),
            Outcome.FORBIDDEN: request(base, "GET", "/partner/rector/event?conversion_id=f1"),
            Outcome.NOT_FOUND: request(base, "GET", "/partner/nobody/event?conversion_id=n1"),
            Outcome.METHOD_NOT_ALLOWED: request(base, "PUT", f"{involve}?conversion_id=m1"),
            Outcome.TOO_LARGE: request(
                base, "POST", involve, body=b"a" * 4096, headers={"Content-Type": "application/x-www-form-urlencoded"}
            ),
            Outcome.UNAVAILABLE: request(base, "GET", "/partner/gone/event?conversion_id=g1"),
        }
        for number in range(10):
            status, body = request(base, "GET", f"{involve}?conversion_id=q{number}")
            if status == 429:
                answers[Outcome.RATE_LIMITED] = (status, body)
                break
    assert set(answers) == set(Outcome), "every outcome was produced"
    components = openapi_to_json_schema(schema["components"])
    for outcome, (status, body) in answers.items():
        assert status == outcome.http_status, (outcome, body)
        if outcome.answer is not None:
            assert body["status"] == outcome.answer, (outcome, body)
        # (PUT has no operation of its own: its 405 is described on GET and POST)
        operation = schema["paths"]["/partner/{endpoint_path}"]["post" if outcome is Outcome.TOO_LARGE else "get"]
        response_schema = operation["responses"][str(status)]["content"]["application/json"]["schema"]
        jsonschema.validate(body, {**openapi_to_json_schema(response_schema), "components": components})
