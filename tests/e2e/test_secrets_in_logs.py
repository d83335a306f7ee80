"""No log line of a real gunicorn carries a partner's secret or a credential, in either log
format, with gunicorn's access log on and through requests that fail."""

import hashlib
import hmac
import json
import time
import urllib.request
import uuid

import pytest

from tests.e2e.raw_http import answers, connect, exchange, read_until_closed, request
from tests.e2e.server import fetch, manage, running_server, service_env

pytestmark = pytest.mark.e2e

# Every atom that could carry a credential, on top of gunicorn's default format.
ACCESS_FORMAT = (
    '%(h)s "%(r)s" %(s)s q=%(q)s ref="%(f)s" tok=%({x-postback-token}i)s sig=%({x-postback-signature}i)s '
    "auth=%({authorization}i)s env=%({http_x_postback_token}e)s raw=%({raw_uri}e)s"
)


@pytest.mark.parametrize("log_format", ["plain", "json"])
def test_no_log_line_carries_a_secret(tmp_path, log_format):
    secret = "pb-secret-" + uuid.uuid4().hex
    metrics_token = "metrics-" + uuid.uuid4().hex
    env = service_env(
        DATABASE_URL=f"sqlite:///{tmp_path}/default.sqlite3",
        PARTNER_DATABASE_URL=f"sqlite:///{tmp_path}/{{name}}.sqlite3",
        LOG_FORMAT=log_format,
        LOG_LEVEL="DEBUG",
        GUNICORN_ACCESS_LOG="-",
        GUNICORN_CMD_ARGS=f"--access-logformat '{ACCESS_FORMAT}'",
        GUNICORN_BODY_TIMEOUT="1",
        METRICS_TOKEN=metrics_token,
    )
    assert manage(env, "init_partners").returncode == 0
    configured = manage(
        env,
        "shell",
        "-c",
        "from partners.models import Partner;"
        f"Partner.objects.filter(partner_code='involve_asia').update(postback_secret='{secret}', enable_logging=True)",
    )
    assert configured.returncode == 0, configured.stderr
    postback = "/partner/involve/event"
    query = "conversion_id=sig-1&usd_payout=1.50"
    signature = hmac.new(secret.encode(), query.encode(), hashlib.sha256).hexdigest()
    log = tmp_path / "server.log"
    with running_server(env, log, workers=1, threads=2) as base:
        statuses = [
            fetch(f"{base}{postback}?conversion_id=q-1&token={secret}", headers={"Referer": f"{base}/?token={secret}"}),
            fetch(f"{base}{postback}?conversion_id=h-1", headers={"X-Postback-Token": secret}),
            fetch(f"{base}{postback}?{query}", headers={"X-Postback-Signature": f"sha256={signature}"}),
            fetch(f"{base}{postback}", data=f"conversion_id=b-1&token={secret}".encode()),
            fetch(f"{base}{postback}?conversion_id=a-1&token={secret}", headers={"Authorization": f"Bearer {secret}"}),
            # refused by the view
            fetch(f"{base}{postback}?conversion_id=w-1&token={secret}x"),
            fetch(f"{base}{postback}?conversion_id=w-2", headers={"X-Postback-Token": secret[:-1]}),
            fetch(f"{base}{postback}?{query}", headers={"X-Postback-Signature": "sha256=" + "0" * 64}),
        ]
        assert [status for status, _ in statuses] == [200] * 5 + [403] * 3
        metrics = urllib.request.Request(f"{base}/metrics", headers={"Authorization": f"Bearer {metrics_token}"})
        with urllib.request.urlopen(metrics, timeout=10) as response:
            assert response.status == 200
        # a request Django itself could not read (a charset that is no text encoding)
        unreadable = request(
            "GET",
            f"{postback}?conversion_id=f-1&token={secret}",
            headers={"Content-Type": "text/plain; charset=rot13", "Connection": "close"},
        )
        assert answers(exchange(base, unreadable))[0].status == 200
        # refused by the server itself: a bad request line, a header without a colon, a
        # header too large, a body that never comes
        bad_line = f"GET {postback}?token={secret}&x=\x7f HTTP/1.1\r\n\r\n".encode("latin-1")
        assert answers(exchange(base, bad_line))[0].status == 400
        no_colon = f"GET {postback}?token={secret} HTTP/1.1\r\nX-Postback-Token {secret}\r\n\r\n".encode()
        assert answers(exchange(base, no_colon))[0].status == 400
        too_large = request("GET", f"{postback}?token={secret}", headers={"X-Postback-Token": secret * 300})
        assert answers(exchange(base, too_large))[0].status == 431
        with connect(base) as sock:
            sock.sendall(
                request(
                    "POST",
                    f"{postback}?conversion_id=t-1&token={secret}",
                    headers={"Content-Length": "100", "X-Postback-Token": secret, "Authorization": f"Token {secret}"},
                    body=b"conversion_id=t-1",
                )
            )
            assert answers(read_until_closed(sock))[0].status == 408
        time.sleep(0.5)  # the last lines reach the log

    text = log.read_text()
    lines = text.splitlines()
    for needle in (secret, secret[:-1], signature, metrics_token):
        leaks = [line for line in lines if needle in line]
        assert not leaks, leaks
    # the URLs are logged, with the token masked, by the application and by gunicorn
    access = [line for line in lines if ' "GET /partner/involve/event?' in line or ' "POST /partner/' in line]
    assert len(access) >= 9, text[-3000:]
    assert any("token=**** HTTP/1.1" in line and "tok=- " in line for line in access)
    assert any("tok=**** " in line and "env=****" in line for line in access)
    assert any(line.startswith("127.0.0.1") and " 408 " in line and "auth=****" in line for line in access)
    assert "Invalid request from ip=127.0.0.1: 400 request_line_invalid" in text
    if log_format == "json":
        request_lines = [
            json.loads(line) for line in lines if line.startswith('{"') and "postback_site.request" in line
        ]
        urls = [entry["httpRequest"]["requestUrl"] for entry in request_lines]
        assert "/partner/involve/event?conversion_id=q-1&token=****" in urls
        assert all(entry["message"].startswith(entry["httpRequest"]["requestMethod"]) for entry in request_lines)
    else:
        assert "'token': '****'" in text  # the step logs' raw parameters
