"""Requests Django cannot even build (a charset that is no text encoding), through the
real server: 4xx JSON, the body kept, never a 500."""

import http.client
import json
from urllib.parse import urlsplit

import pytest

from tests.e2e.server import manage, running_server, service_env

pytestmark = pytest.mark.e2e


def send(base: str, method: str, path: str, *, content_type: str, body: bytes = b""):
    parts = urlsplit(base)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    connection.request(method, path, body=body or None, headers={"Content-Type": content_type})
    response = connection.getresponse()
    answer = response.status, json.loads(response.read())
    connection.close()
    return answer


def test_a_charset_that_is_no_text_encoding_is_a_4xx_naming_it_never_a_500(tmp_path):
    env = service_env(
        DATABASE_URL=f"sqlite:///{tmp_path}/default.sqlite3",
        PARTNER_DATABASE_URL=f"sqlite:///{tmp_path}/{{name}}.sqlite3",
    )
    assert manage(env, "init_partners").returncode == 0
    with running_server(env, tmp_path / "server.log", workers=1, threads=2) as base:
        answers = {
            charset: (
                send(
                    base,
                    "GET",
                    f"/partner/involve/event?conversion_id=g-{charset}",
                    content_type=f"text/plain; charset={charset}",
                ),
                send(
                    base,
                    "POST",
                    "/partner/involve/event",
                    content_type=f"application/x-www-form-urlencoded; charset={charset}",
                    body=f"conversion_id=p-{charset}".encode(),
                ),
            )
            for charset in ("rot13", "base64", "no-such-charset")
        }
        admin_page = send(base, "GET", "/health", content_type="text/plain; charset=rot13")
    for charset, (get, post) in answers.items():
        # a query string is read as UTF-8 whatever the body's charset says
        assert get[0] == 200 and get[1]["status"] == "success", (charset, get)
        assert post[0] == 400, (charset, post)
        assert post[1]["errors"]["body"] == f"has charset '{charset}', which is not a text encoding (send UTF-8)"
        assert post[1]["conversion"]["processing_error"]
    assert admin_page[0] == 200
    log = (tmp_path / "server.log").read_text()
    assert "LookupError" not in log and "Traceback" not in log
