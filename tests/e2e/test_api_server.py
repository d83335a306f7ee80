"""The read API and its docs against a real gunicorn, with a token made by drf_create_token."""

import csv
import io
import re
import urllib.error
import urllib.request

import pytest

from tests.e2e.server import fetch, manage, running_server, service_env

pytestmark = pytest.mark.e2e


def get(url: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def test_token_reads_conversions_stats_and_csv_and_docs_are_self_hosted(tmp_path):
    env = service_env(
        DATABASE_URL=f"sqlite:///{tmp_path}/default.sqlite3",
        PARTNER_DATABASE_URL=f"sqlite:///{tmp_path}/{{name}}.sqlite3",
        DJANGO_SUPERUSER_PASSWORD="e2e-password-not-used",
    )
    for command in (
        ("init_partners",),
        ("createsuperuser", "--noinput", "--username", "analyst", "--email", "analyst@example.com"),
        ("collectstatic", "--noinput", "--verbosity", "0"),
    ):
        result = manage(env, *command)
        assert result.returncode == 0, result.stderr
    created = manage(env, "drf_create_token", "analyst")
    assert created.returncode == 0, created.stderr
    token = re.search(r"Generated token (\w+) for user analyst", created.stdout).group(1)
    auth = {"Authorization": f"Token {token}"}

    with running_server(env, tmp_path / "server.log") as base:
        for query in ("conversion_id=e1&usd_payout=1.50", "conversion_id=e2&usd_payout=2.25", "conversion_id=e1"):
            assert fetch(f"{base}/partner/involve/event?{query}")[0] == 200

        status, headers, body = get(f"{base}/partner/involve/event/conversions")
        assert (status, headers["WWW-Authenticate"]) == (401, "Token")

        status, page = fetch(f"{base}/partner/involve/event/conversions?limit=2", headers=auth)
        assert status == 200
        assert [row["conversion_id"] for row in page["results"]] == ["e1", "e2"]
        assert page["next"].startswith(f"{base}/partner/involve/event/conversions?")
        status, rest = fetch(page["next"], headers=auth)
        assert [row["conversion_id"] for row in rest["results"]] == ["e1"] and rest["next"] is None

        status, headers, body = get(f"{base}/partner/involve/event/conversions?format=csv", headers=auth)
        assert status == 200 and headers["Content-Type"] == "text/csv; charset=utf-8"
        rows = list(csv.DictReader(io.StringIO(body.decode())))
        assert [(row["conversion_id"], row["outcome"]) for row in rows] == [
            ("e1", "duplicate"),
            ("e2", "original"),
            ("e1", "original"),
        ]

        status, stats = fetch(f"{base}/partner/involve/event/stats", headers=auth)
        assert status == 200
        assert stats["totals"] == {
            "originals": 2,
            "duplicates": 1,
            "rejected": 0,
            "usd_sale_amount": "0.00",
            "usd_earning": "3.75",
        }

        status, _, schema = get(f"{base}/api/schema/")
        assert status == 200 and b"/partner/{endpoint_path}/conversions" in schema
        status, _, html = get(f"{base}/api/docs/")
        assert status == 200
        assets = re.findall(r'(?:src|href)="([^"]+)"', html.decode())
        assert assets and all(asset.startswith("/static/") for asset in assets)
        for asset in assets:
            status, headers, content = get(base + asset)
            assert status == 200 and content, asset
