"""What the HTTP server itself does with a request, against a real gunicorn: chunked bodies,
requests it refuses before the application (in JSON), keep-alive and pipelining, deadlines."""

import http.client
import json
import socket
import sqlite3
import subprocess
import sys
import time

import pytest

from tests.e2e.raw_http import address, answers, chunked, connect, exchange, read_until_closed, request
from tests.e2e.server import PROJECT_DIR, free_port, manage, running_server, service_env

pytestmark = pytest.mark.e2e

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
POSTBACK = "/partner/involve/event"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(base URL, path of InvolveAsia's SQLite database) of a server on the embedded default."""
    root = tmp_path_factory.mktemp("edge")
    env = service_env(
        DATABASE_URL=f"sqlite:///{root}/default.sqlite3",
        PARTNER_DATABASE_URL=f"sqlite:///{root}/{{name}}.sqlite3",
    )
    assert manage(env, "init_partners").returncode == 0
    with running_server(env, root / "server.log", workers=2, threads=4) as base:
        yield base, root / "involve_asia_db.sqlite3"


def stored(database, conversion_id: str) -> dict:
    with sqlite3.connect(database) as conn:
        conn.row_factory = sqlite3.Row
        row = conn.execute(
            "SELECT * FROM partner_conversions WHERE conversion_id = ? AND NOT is_duplicate", [conversion_id]
        ).fetchone()
    return dict(row) if row else {}


def refused_in_json(data: bytes, status: int, reason: str) -> dict:
    """The single answer in `data`: `status`, JSON, the connection closed; its body."""
    (answer,) = answers(data)
    assert answer.status == status, answer
    assert answer.headers["content-type"] == "application/json"
    assert answer.headers["connection"] == "close"
    body = answer.json()
    assert body["status"] == "error" and body["reason"] == reason and body["message"], body
    return body


def test_a_chunked_postback_is_stored_with_its_parameters(server):
    base, database = server
    form = b"conversion_id=chunk-1&usd_payout=4.67&aff_sub=s-chunk&offer_name=Shopee%20MY"
    (answer,) = answers(
        exchange(
            base,
            request("POST", POSTBACK, headers={**FORM, "Transfer-Encoding": "chunked", "Connection": "close"})
            + chunked(form, size=5),
        )
    )
    assert answer.status == 200 and answer.json()["status"] == "success", answer
    row = stored(database, "chunk-1")
    assert (row["usd_earning"], row["sub_id"], row["offer_name"]) == (4.67, "s-chunk", "Shopee MY")

    body = json.dumps({"conversion_id": "chunk-2", "usd_payout": 1.25}).encode()
    # chunk extensions and a trailer section are allowed, and not part of the body
    encoded = b"5;name=value\r\n" + body[:5] + b"\r\n" + b"%x\r\n" % (len(body) - 5) + body[5:] + b"\r\n"
    encoded += b"0\r\nX-Checksum: abc\r\n\r\n"
    (answer,) = answers(
        exchange(
            base,
            request(
                "POST",
                POSTBACK,
                headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked", "Connection": "close"},
            )
            + encoded,
        )
    )
    assert answer.status == 200 and answer.json()["conversion"]["usd_earning"] == "1.25", answer


def test_a_chunked_body_over_the_limit_is_413(server):
    base, database = server
    big = b"conversion_id=chunk-big&x=" + b"a" * 100_000
    body = refused_in_json(
        exchange(
            base, request("POST", POSTBACK, headers={**FORM, "Transfer-Encoding": "chunked"}) + chunked(big, 8192)
        ),
        413,
        "body_too_large",
    )
    assert "65536" in body["message"]
    assert stored(database, "chunk-big") == {}


@pytest.mark.parametrize(
    "encoded",
    [
        b"zz\r\nconversion_id=x\r\n0\r\n\r\n",  # not a hexadecimal size
        b"-5\r\nabcde\r\n0\r\n\r\n",
        b"5\r\nabcdefgh\r\n0\r\n\r\n",  # more data than announced
        b"5;=bad\r\nabcde\r\n0\r\n\r\n",  # malformed extension
        b"5\nabcde\n0\n\n",  # bare LF
        b"0\r\nno colon here\r\n\r\n",  # malformed trailer
        b"conversion_id=x",  # not chunked at all: refused at once, not after the body timeout
    ],
)
def test_a_malformed_chunked_body_is_400(server, encoded):
    base, _ = server
    body = refused_in_json(
        exchange(base, request("POST", POSTBACK, headers={**FORM, "Transfer-Encoding": "chunked"}) + encoded),
        400,
        "chunked_body_invalid",
    )
    assert body["message"].startswith("Malformed chunked body")


def test_a_declared_body_over_the_limit_is_refused_by_the_postback_view(server):
    base, _ = server
    # The view refuses it by its Content-Length (and counts it for the partner); the body
    # is never read, and the connection closes after the answer.
    head = request("POST", POSTBACK, headers={**FORM, "Content-Length": "70000", "Expect": "100-continue"})
    with connect(base) as sock:
        sock.sendall(head)
        (answer,) = answers(read_until_closed(sock))
    assert answer.status == 413 and answer.json()["reason"] == "body_too_large"
    assert answer.json()["partner"]["code"] == "involve_asia"


LONG_HEADERS = "".join(f"X-Filler-{index}: {'v' * 4000}\r\n" for index in range(20))


@pytest.mark.parametrize(
    ("data", "status", "reason", "says"),
    [
        (b"GET /partner/involve/event?x=" + b"a" * 5000 + b" HTTP/1.1\r\n\r\n", 414, "request_line_too_long", "4094"),
        (b"GET /partner/involve/event?x=" + b"a" * 5000, 414, "request_line_too_long", "4094"),  # not even finished
        (b"GET / HTTP/1.1\r\nX-Big: " + b"v" * 9000 + b"\r\n\r\n", 431, "headers_too_large", "8190"),
        (b"GET / HTTP/1.1\r\n" + b"X-A: b\r\n" * 101 + b"\r\n", 431, "headers_too_large", "100 header fields"),
        (b"GET / HTTP/1.1\r\n" + LONG_HEADERS.encode(), 431, "headers_too_large", "65536"),
        (b"GARBAGE\r\n\r\n", 400, "request_line_invalid", "request line"),
        (b"GET /partner/a\x7fb HTTP/1.1\r\n\r\n", 400, "request_line_invalid", "request line"),
        (b"GET / HTTP/2.0\r\n\r\n", 400, "request_line_invalid", "HTTP version"),
        (b"get / HTTP/1.1\r\n\r\n", 400, "request_line_invalid", "method"),
        (b"GET / HTTP/1.1\r\nno colon\r\n\r\n", 400, "header_invalid", "header"),
        (b"GET / HTTP/1.1\nHost: localhost\n", 400, "header_invalid", "CRLF"),  # refused before the head ends
        (b"GET / HTTP/1.1\r\nX-Folded: a\r\n b\r\n\r\n", 400, "header_invalid", "folded"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, "header_invalid", "HOST"),
        (
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
            "header_invalid",
            "CONTENT-LENGTH",
        ),
        (b"POST / HTTP/1.1\r\nContent-Length: -5\r\n\r\n", 400, "header_invalid", "CONTENT-LENGTH"),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501, "transfer_coding_unsupported", "chunked"),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: br\r\n\r\n", 501, "transfer_coding_unsupported", "chunked"),
        (b"GET / HTTP/1.1\r\nExpect: 200-ok\r\n\r\n", 417, "expectation_failed", "100-continue"),
    ],
)
def test_requests_the_server_refuses_are_answered_in_json(server, data, status, reason, says):
    base, _ = server
    body = refused_in_json(exchange(base, data), status, reason)
    assert says in body["message"], body


def test_keep_alive_serves_every_kind_of_body_on_one_connection(server):
    base, database = server
    connection = http.client.HTTPConnection(*address(base), timeout=10)
    sockets = set()
    for index, (body, headers) in enumerate(
        [
            (None, {}),
            (b"usd_payout=1.50", FORM),
            (iter([b"usd_payout=", b"2.50"]), {**FORM, "Transfer-Encoding": "chunked"}),  # http.client chunks it
            (json.dumps({"usd_payout": 3.5}).encode(), {"Content-Type": "application/json"}),
        ]
    ):
        method = "GET" if body is None else "POST"
        chunks = "Transfer-Encoding" in headers
        connection.request(
            method, f"{POSTBACK}?conversion_id=keep-{index}", body=body, headers=headers, encode_chunked=chunks
        )
        response = connection.getresponse()
        assert response.status == 200 and json.loads(response.read())["status"] == "success"
        assert response.getheader("Connection") == "keep-alive"
        sockets.add(id(connection.sock))
    connection.close()
    assert len(sockets) == 1, "one connection carried every request"
    assert [stored(database, f"keep-{index}")["usd_earning"] for index in range(4)] == [None, 1.5, 2.5, 3.5]


def test_pipelined_requests_are_answered_in_order(server):
    base, database = server
    pipeline = (
        request("GET", f"{POSTBACK}?conversion_id=pipe-1")
        + request("POST", f"{POSTBACK}?conversion_id=pipe-2", headers=FORM, body=b"usd_payout=2.00")
        + request("POST", POSTBACK, headers={**FORM, "Transfer-Encoding": "chunked"})
        + chunked(b"conversion_id=pipe-3&usd_payout=3.00", size=4)
        + request("GET", f"{POSTBACK}?conversion_id=pipe-1")
        + request("GET", "/info", headers={"Connection": "close"})
    )
    with connect(base) as sock:
        # in pieces cut anywhere: a request's bytes may arrive with the previous one's
        for start in range(0, len(pipeline), 97):
            sock.sendall(pipeline[start : start + 97])
        received = read_until_closed(sock)
    statuses = [(answer.status, answer.json().get("status")) for answer in answers(received)]
    assert statuses == [(200, "success")] * 3 + [(200, "duplicate"), (200, None)]
    assert [stored(database, f"pipe-{index}").get("usd_earning") for index in (1, 2, 3)] == [None, 2.0, 3.0]


def test_expect_100_continue_is_answered_before_the_body(server):
    base, database = server
    body = b"conversion_id=expect-1&usd_payout=5.00"
    with connect(base) as sock:
        sock.sendall(
            request("POST", POSTBACK, headers={**FORM, "Content-Length": str(len(body)), "Expect": "100-continue"})
        )
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        sock.settimeout(10)
        response = http.client.HTTPResponse(sock)
        response.begin()
        assert response.status == 200 and json.loads(response.read())["status"] == "success"
    assert stored(database, "expect-1")["usd_earning"] == 5.0


def test_deadlines_close_slow_and_idle_connections(tmp_path):
    env = service_env(
        DATABASE_URL=f"sqlite:///{tmp_path}/default.sqlite3",
        PARTNER_DATABASE_URL=f"sqlite:///{tmp_path}/{{name}}.sqlite3",
        GUNICORN_HEADER_TIMEOUT="1",
        GUNICORN_BODY_TIMEOUT="2",
    )
    assert manage(env, "init_partners").returncode == 0
    with running_server(env, tmp_path / "server.log", workers=1, threads=2) as base:
        silent = connect(base)
        slow_head = connect(base)
        slow_head.sendall(b"GET /partner/involve/event?conversion_id=late HTTP/1.1\r\nHost: local")
        slow_body = connect(base)
        slow_body.sendall(request("POST", POSTBACK, headers={**FORM, "Content-Length": "100"}, body=b"conversion_id="))
        kept = http.client.HTTPConnection(*address(base), timeout=10)
        kept.request("GET", "/info")
        kept.getresponse().read()
        started = time.monotonic()
        # every byte on time, but the head as a whole too late: deadlines, not idle timers
        dribbled = connect(base)
        for byte in b"GET /info HTTP/1.1\r\nHost: local":
            dribbled.send(bytes([byte]))
            time.sleep(0.05)

        refused_in_json(read_until_closed(slow_head), 408, "header_timeout")
        refused_in_json(read_until_closed(dribbled), 408, "header_timeout")
        body = refused_in_json(read_until_closed(slow_body), 408, "body_timeout")
        assert "2 s" in body["message"]
        assert read_until_closed(silent) == b""  # never spoke: closed without an answer
        assert time.monotonic() - started < 6
        # an idle kept-alive connection is closed after gunicorn's keepalive (5 s), silently
        assert read_until_closed(kept.sock, timeout=10) == b""
        assert time.monotonic() - started < 10
        for sock in (silent, slow_head, slow_body, dribbled):
            sock.close()
        kept.close()
        # the server still answers
        with socket.create_connection(address(base), timeout=5) as sock:
            sock.sendall(request("GET", "/info", headers={"Connection": "close"}))
            assert answers(read_until_closed(sock))[0].status == 200


SLOW_READER_APP = """
def app(environ, start_response):
    if environ["PATH_INFO"] == "/big":
        start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(64 << 20))])
        return (b"x" * 65536 for _ in range(1024))
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]
"""


def test_a_client_that_stops_reading_gives_its_thread_back(tmp_path):
    # A WSGI app with a 64 MiB answer, more than the kernel's buffers hold: its writes
    # block once the client stops reading. Two such clients hold both threads of the
    # worker until GUNICORN_SEND_TIMEOUT.
    (tmp_path / "slow_reader_app.py").write_text(SLOW_READER_APP)
    port = free_port()
    env = service_env(
        DJANGO_SETTINGS_MODULE="postback_site.settings",
        PYTHONPATH=str(PROJECT_DIR),
        DATABASE_URL=f"sqlite:///{tmp_path}/default.sqlite3",
        PARTNER_DATABASE_URL=f"sqlite:///{tmp_path}/{{name}}.sqlite3",
        GUNICORN_SEND_TIMEOUT="1",
    )
    command = [sys.executable, "-m", "gunicorn", "--chdir", str(tmp_path), "-b", f"127.0.0.1:{port}", "-w", "1"]
    command += ["--threads", "2", "-k", "infra.http.worker.PostbackWorker", "slow_reader_app:app"]
    with open(tmp_path / "server.log", "w") as log:
        server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                assert answers(exchange(base, request("GET", "/", headers={"Connection": "close"})))[0].status == 200
                break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None, (tmp_path / "server.log").read_text()
                time.sleep(0.2)
        readers = []
        for _ in range(2):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(address(base))
            sock.sendall(request("GET", "/big"))
            readers.append(sock)
        time.sleep(0.5)  # both threads are writing, and stuck
        started = time.monotonic()
        with connect(base, timeout=15) as sock:
            sock.sendall(request("GET", "/", headers={"Connection": "close"}))
            assert answers(read_until_closed(sock, timeout=15))[0].status == 200
        assert time.monotonic() - started < 5
        for sock in readers:
            sock.close()
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    assert "its client read nothing for 1s" in (tmp_path / "server.log").read_text()
