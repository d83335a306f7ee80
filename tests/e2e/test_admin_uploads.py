"""Admin uploads through a real gunicorn: a network's CSV report posted to the admin's
reconciliation page may be far larger than a postback body (up to ADMIN_UPLOAD_MAX_BYTES),
and is streamed to a temporary file, so the worker's memory stays flat; postbacks keep
POSTBACK_MAX_BODY_BYTES."""

import http.client
import json
import os
import re
import time
from collections.abc import Iterable, Iterator
from http.cookies import SimpleCookie
from pathlib import Path

import pytest
from django.urls import reverse

from infra.http.limits import ADMIN_PATH_PREFIX
from tests.e2e.raw_http import address, answers, chunked, connect, read_until_closed, request
from tests.e2e.server import manage, running_server, service_env

pytestmark = pytest.mark.e2e

ADMIN_PASSWORD = "e2e-admin-password-1234"
ADMIN_UPLOAD_MAX_BYTES = 64 << 20  # the default
BODY_TIMEOUT = 2  # GUNICORN_BODY_TIMEOUT of the server under test: short, so a stalled body is quick to see
MB = 1_000_000
CREATE_SOURCE = """
from partners.models import Partner
from reconciliation.models import CSV_UPLOAD, ReportSource
source = ReportSource.objects.create(
    partner=Partner.objects.get(partner_code="involve_asia"), name="Monthly CSV", kind=CSV_UPLOAD
)
print("source", source.pk)
"""
CSV_HEADER = b"conversion_id,datetime_conversion,offer_name,usd_sale_amount,usd_payout,aff_sub,aff_sub2,aff_sub3\n"


def csv_rows(start: int, count: int) -> bytes:
    return b"".join(
        b"IA-%07d,2025-01-15 13:45:10,Shopee MY,93.47,4.67,pub42,media456,click%06d\n" % (number, number % 999_999)
        for number in range(start, start + count)
    )


def csv_report(size: int) -> Iterator[bytes]:
    """A network's CSV report of exactly `size` bytes (its last row cut short), in pieces of about 1 MB."""
    yield CSV_HEADER
    sent = len(CSV_HEADER)
    row = 0
    while sent < size:
        block = csv_rows(row, 13_000)[: size - sent]
        row += 13_000
        sent += len(block)
        yield block


def form_fields(boundary: str, fields: dict[str, str]) -> str:
    """`fields` as parts of a multipart/form-data body."""
    return "".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        for name, value in fields.items()
    )


class AdminSession:
    """A logged-in staff user, over http.client: its cookies kept, each form's CSRF token read."""

    def __init__(self, base: str):
        self.host, self.port = address(base)
        self.cookies: dict[str, str] = {}

    def _request(
        self, method: str, path: str, *, body: Iterable[bytes] | bytes | None = None, headers: dict | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        connection = http.client.HTTPConnection(self.host, self.port, timeout=120)
        fields = dict(headers or {})
        if self.cookies:
            fields["Cookie"] = "; ".join(f"{name}={value}" for name, value in self.cookies.items())
        connection.request(method, path, body=body, headers=fields)
        response = connection.getresponse()
        content = response.read()
        for header in response.headers.get_all("Set-Cookie") or []:
            for name, morsel in SimpleCookie(header).items():
                self.cookies[name] = morsel.value
        connection.close()
        return response.status, {name.lower(): value for name, value in response.getheaders()}, content

    def get(self, path: str) -> tuple[int, bytes]:
        status, _, content = self._request("GET", path)
        return status, content

    def form_token(self, path: str) -> str:
        status, page = self.get(path)
        assert status == 200, (path, status, page[:500])
        return re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1).decode()

    def log_in(self, username: str, password: str) -> None:
        token = self.form_token("/admin/login/")
        form = f"csrfmiddlewaretoken={token}&username={username}&password={password}&next=/admin/".encode()
        status, headers, _ = self._request(
            "POST", "/admin/login/", body=form, headers={"Content-Type": "application/x-www-form-urlencoded"}
        )
        assert status == 302 and headers["location"] == "/admin/", (status, headers)

    def upload(
        self, path: str, *, fields: dict[str, str], report: Iterable[bytes], size: int, token: str
    ) -> tuple[int, dict[str, str], bytes]:
        """POST `fields` and a file of `size` bytes as multipart/form-data, streamed as it is
        generated. The CSRF token comes last: Django reads the whole body to find it."""
        boundary = "----postback-e2e-boundary-7MA4YWxkTrZu0gW"
        head = form_fields(boundary, fields) + (
            f'--{boundary}\r\nContent-Disposition: form-data; name="report"; filename="report.csv"\r\n'
            "Content-Type: text/csv\r\n\r\n"
        )
        tail = "\r\n" + form_fields(boundary, {"csrfmiddlewaretoken": token}) + f"--{boundary}--\r\n"
        length = len(head) + size + len(tail)

        def body() -> Iterator[bytes]:
            yield head.encode()
            yield from report
            yield tail.encode()

        return self._request(
            "POST",
            path,
            body=body(),
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}", "Content-Length": str(length)},
        )


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()  # after "pid (command)": state, ppid, ...
        except OSError:  # gone meanwhile
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def worker_pid(port: int) -> int:
    """The pid of the one worker of the gunicorn this process started on `port`."""
    for master in children(os.getpid()):
        environ = Path(f"/proc/{master}/environ").read_bytes().split(b"\0")
        if f"PORT={port}".encode() in environ:
            (worker,) = children(master)
            return worker
    raise AssertionError(f"no gunicorn of this test process serves port {port}")


def temporary_files(pid: int) -> list[str]:
    """The removed files the process still holds open: the worker's unnamed temporary files
    of request bodies, and Django's of uploaded files."""
    held = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed meanwhile
            continue
        if target.endswith(" (deleted)") and "wgunicorn-" not in target:  # not gunicorn's heartbeat file
            held.append(target)
    return held


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident memory so far (VmHWM), in MB."""
    kilobytes = re.search(r"VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text()).group(1)
    return int(kilobytes) * 1024 / MB


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(base URL, the reconciliation page of a CSV source, a logged-in superuser) on one worker."""
    root = tmp_path_factory.mktemp("uploads")
    env = service_env(
        DATABASE_URL=f"sqlite:///{root}/default.sqlite3",
        PARTNER_DATABASE_URL=f"sqlite:///{root}/{{name}}.sqlite3",
        DJANGO_SUPERUSER_PASSWORD=ADMIN_PASSWORD,
        GUNICORN_BODY_TIMEOUT=str(BODY_TIMEOUT),
    )
    for command in (
        ("init_partners",),
        ("createsuperuser", "--noinput", "--username", "manager", "--email", "manager@example.com"),
    ):
        done = manage(env, *command)
        assert done.returncode == 0, done.stderr
    created = manage(env, "shell", "-c", CREATE_SOURCE)
    assert created.returncode == 0, created.stderr
    source_id = re.search(r"source (\d+)", created.stdout).group(1)
    with running_server(env, root / "server.log", workers=1, threads=2) as base:
        session = AdminSession(base)
        session.log_in("manager", ADMIN_PASSWORD)
        yield base, f"/admin/reconciliation/reportsource/{source_id}/reconcile/", session


# The days of a run; the same day twice is a valid run, the last day before the first an
# invalid one: its page comes back with the form's error and the file is left alone, so
# what is measured is the server's reading of the upload, not what the page does with it.
VALID_DAYS = {"date_from": "2025-01-15", "date_to": "2025-01-15"}
INVALID_DAYS = {"date_from": "2025-01-15", "date_to": "2025-01-14"}


def test_a_1000_row_report_is_not_refused_as_a_postback_body(server):
    # The report that was answered a bare "Bad Request (400)": 1,000 rows, over 64 KiB.
    base, page, session = server
    report = CSV_HEADER + csv_rows(0, 1000)
    assert len(report) > 65536
    status, _, content = session.upload(
        page, fields=VALID_DAYS, report=[report], size=len(report), token=session.form_token(page)
    )
    assert status in (200, 302), (status, content[:500])


def test_large_reports_are_streamed_and_the_worker_memory_stays_flat(server):
    base, page, session = server
    worker = worker_pid(address(base)[1])
    warm_up = CSV_HEADER + csv_rows(0, 30_000)  # 2.3 MB: Django's multipart parser and temporary files in use
    status, _, _ = session.upload(
        page, fields=INVALID_DAYS, report=[warm_up], size=len(warm_up), token=session.form_token(page)
    )
    assert status == 200
    before = peak_rss_mb(worker)
    peaks = []
    for size in (7 * MB, 60 * MB):
        started = time.monotonic()
        status, _, content = session.upload(
            page, fields=INVALID_DAYS, report=csv_report(size), size=size, token=session.form_token(page)
        )
        assert status == 200, (size, status, content[:500])
        peaks.append((size, peak_rss_mb(worker), time.monotonic() - started))
    print(
        f"\nworker peak RSS (VmHWM): {before:.1f} MB before; "
        + "; ".join(f"{peak:.1f} MB after a {size // MB} MB upload ({seconds:.1f} s)" for size, peak, seconds in peaks)
    )
    assert peaks[-1][1] - before < 40, "the 60 MB upload was held in the worker's memory"
    deadline = time.monotonic() + 5  # the worker closes a body's file once its answer is sent
    while temporary_files(worker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert temporary_files(worker) == []


def test_an_upload_over_the_admin_limit_is_413_in_json_naming_it(server):
    base, page, session = server
    size = ADMIN_UPLOAD_MAX_BYTES + 1 * MB
    # A client that sends its whole body before reading (as browsers do) still reads the answer.
    status, headers, content = session.upload(
        page, fields=VALID_DAYS, report=csv_report(size), size=size, token=session.form_token(page)
    )
    assert (status, headers["content-type"]) == (413, "application/json"), (status, content[:500])
    body = json.loads(content)
    assert body["reason"] == "body_too_large"
    assert "ADMIN_UPLOAD_MAX_BYTES" in body["message"] and str(ADMIN_UPLOAD_MAX_BYTES) in body["message"], body

    # One that asks first is refused before it sends a byte of the body; the limit goes by
    # the path Django routes (percent-decoded).
    for path in (page, page.replace("/admin/", "/%61dmin/")):
        with connect(base) as sock:
            sock.sendall(
                request(
                    "POST",
                    path,
                    headers={"Content-Length": str(size), "Content-Type": "text/csv", "Expect": "100-continue"},
                )
            )
            (answer,) = answers(read_until_closed(sock, timeout=BODY_TIMEOUT + 5))
        assert answer.status == 413 and "ADMIN_UPLOAD_MAX_BYTES" in answer.json()["message"], (path, answer)

    # Chunked: refused at the first chunk that would cross the limit.
    with connect(base) as sock:
        sock.sendall(
            request("POST", page, headers={"Transfer-Encoding": "chunked", "Content-Type": "text/csv"})
            + b"%x\r\n" % (ADMIN_UPLOAD_MAX_BYTES + 1)
            + b"x" * 1000
        )
        (answer,) = answers(read_until_closed(sock, timeout=BODY_TIMEOUT + 5))
    assert answer.status == 413 and "ADMIN_UPLOAD_MAX_BYTES" in answer.json()["message"]


def test_a_chunked_upload_is_streamed_too(server):
    base, page, session = server
    report = b"".join(csv_report(3 * MB))
    boundary = "chunked-e2e-boundary"
    head = form_fields(boundary, {**INVALID_DAYS, "csrfmiddlewaretoken": session.form_token(page)})
    head += f'--{boundary}\r\nContent-Disposition: form-data; name="report"; filename="r.csv"\r\n\r\n'
    form = head.encode() + report + f"\r\n--{boundary}--\r\n".encode()
    cookies = "; ".join(f"{name}={value}" for name, value in session.cookies.items())
    with connect(base, timeout=30) as sock:
        sock.sendall(
            request(
                "POST",
                page,
                headers={
                    "Content-Type": f"multipart/form-data; boundary={boundary}",
                    "Transfer-Encoding": "chunked",
                    "Cookie": cookies,
                    "Connection": "close",
                },
            )
            + chunked(form, size=256 * 1024)
        )
        (answer,) = answers(read_until_closed(sock, timeout=30))
    assert answer.status == 200, answer.body[:500]


def test_a_steady_upload_may_take_longer_than_the_body_timeout_a_stalled_one_may_not(server):
    base, page, session = server
    size = 3 * MB
    token = session.form_token(page)
    started = time.monotonic()

    def steady() -> Iterator[bytes]:
        # about 1 MB/s, 16 times the minimum rate: twice GUNICORN_BODY_TIMEOUT in all
        for block in csv_report(size):
            for start in range(0, len(block), 64 * 1024):
                yield block[start : start + 64 * 1024]
                time.sleep(64 * 1024 / (size / (2 * BODY_TIMEOUT)))

    status, _, content = session.upload(page, fields=INVALID_DAYS, report=steady(), size=size, token=token)
    assert status == 200, (status, content[:500])
    assert time.monotonic() - started > BODY_TIMEOUT

    # The same upload stalling after its first 100 kB is cut off GUNICORN_BODY_TIMEOUT after
    # its head, plus 1 s per 64 KiB it sent: 3.5 s.
    with connect(base) as sock:
        started = time.monotonic()
        sock.sendall(
            request("POST", page, headers={"Content-Length": str(size), "Content-Type": "text/csv"}) + b"x" * 100_000
        )
        (answer,) = answers(read_until_closed(sock, timeout=BODY_TIMEOUT + 10))
        waited = time.monotonic() - started
    assert answer.status == 408 and answer.json()["reason"] == "body_timeout", answer
    assert waited < BODY_TIMEOUT + 100_000 / 65536 + 1.5


def test_postbacks_keep_their_own_body_limit(server):
    base, _, _ = server
    form = b"conversion_id=big-1&x=" + b"a" * 70_000
    connection = http.client.HTTPConnection(*address(base), timeout=30)
    connection.request(
        "POST", "/partner/involve/event", body=form, headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    response = connection.getresponse()
    body = json.loads(response.read())
    connection.close()
    assert response.status == 413 and body["reason"] == "body_too_large", body
    assert "65536" in body["message"]

    # Every path but the admin's keeps it: postbacks, and the service's own endpoints.
    for path in ("/partner/involve/event", "/health", "/api/schema/", "/adminx/"):
        with connect(base) as sock:
            sock.sendall(
                request(
                    "POST",
                    path,
                    headers={"Content-Type": "application/x-www-form-urlencoded", "Transfer-Encoding": "chunked"},
                )
                + chunked(form, size=8192)
            )
            (answer,) = answers(read_until_closed(sock))
        assert answer.status == 413 and answer.json()["reason"] == "body_too_large", (path, answer)
        assert "POSTBACK_MAX_BODY_BYTES" in answer.json()["message"] and "65536" in answer.json()["message"]


def test_the_worker_gives_the_admin_limit_where_the_admin_is_served():
    # The worker decides by a path prefix before any URL is resolved; the URLconf decides the admin's.
    assert reverse("admin:index") == ADMIN_PATH_PREFIX
