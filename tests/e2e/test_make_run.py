"""The README's run command: `make run` on the embedded default serves the seed postbacks,
runs the delivery worker beside the server, and Ctrl-C stops both."""

import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

from tests.e2e.server import PROJECT_DIR, free_port, manage, service_env
from tests.support.fake_publisher import FakePublisher

# The original design document's six curl examples, verbatim but for the port.
SEED_POSTBACK = (
    "/partner/involve/event?sub_id=test123&media_id=media456&click_id=click789&usd_sale_amount=99.99"
    "&usd_payout=9.99&offer_name=Test&conversion_id=conv001&conversion_datetime=2025-01-15"
)
SEED_RECTOR_POSTBACK = (
    "/partner/rector/event?media_id=media456&sub_id=test123&usd_sale_amount=99.99&usd_earning=9.99"
    "&offer_name=Test&conversion_id=conv002&conversion_datetime=2025-01-15&click_id=click789"
)
# The previous service's InvolveAsia template at the root address it served.
PREVIOUS_SERVICE_POSTBACK = (
    "/involve/event?sub_id=RAMPUP-{n}&media_id=m{n}&click_id=c{n}&usd_sale_amount=12.{n}0&usd_payout=1.{n}0"
    "&offer_name=Shopee%20ID&conversion_id=legacy-{n}&conversion_datetime=2026-11-1{n}T10:00:00Z"
)
SEED_READS = ("/partner/involve/event/stats", "/partner/involve/event/conversions?limit=10", "/health", "/info")


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def _curl(url: str) -> tuple[int, dict]:
    """What the seed's `curl "URL"` gets: the status and the JSON body."""
    done = subprocess.run(
        ["curl", "-s", "-o", "-", "-w", "\n%{http_code}", url], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, (url, done.returncode, done.stderr)
    body, _, status = done.stdout.rpartition("\n")
    return int(status), json.loads(body)


def _listening_addresses(port: int) -> set[str]:
    """The local addresses of the sockets listening on `port` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, _, hex_port = fields[1].rpartition(":")
            if fields[3] == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_make_run_serves_the_seed_postbacks_with_the_delivery_worker_and_stops_on_ctrl_c(tmp_path: Path):
    port = free_port()
    # The embedded default, only placed in a temporary folder instead of var/.
    env = {
        key: value
        for key, value in service_env().items()
        if key
        not in {
            "DATABASE_URL",
            "PARTNER_DATABASE_URL",
            "SECRET_KEY",
            "LOG_FILE",
            "MAKEFLAGS",
            "HOST",
            "LOOPBACK_READS_WITHOUT_TOKEN",
        }
    }
    env.update(
        DATABASE_URL=f"sqlite:///{tmp_path}/default.sqlite3",
        PARTNER_DATABASE_URL=f"sqlite:///{tmp_path}/{{name}}.sqlite3",
        OUTBOUND_ALLOW_PRIVATE="1",  # the fake publisher listens on 127.0.0.1
        PARTNER_CACHE_SECONDS="1",
        DELIVERY_POLL_SECONDS="0.2",
    )
    log_path = tmp_path / "make-run.log"
    with FakePublisher() as publisher, open(log_path, "w") as log:
        make = subprocess.Popen(
            ["make", "--no-print-directory", "run", f"PORT={port}"],
            cwd=PROJECT_DIR,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, as a terminal's Ctrl-C reaches
        )
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 120
            while True:
                try:
                    if _get(base + "/health")[0] == 200:
                        break
                except OSError:
                    pass
                assert make.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.3)

            added = manage(
                env,
                "shell",
                "-c",
                "from publishers.models import Publisher; from publishers.services import publisher_save;"
                "p = Publisher(code='tester', name='Tester', match_regex='^test',"
                f" url_template='{publisher.url}/pb?c={{conversion_id}}&s={{sub_id}}', events=['recorded'],"
                " payout_kind='percent_sale', payout_value=1); p.full_clean(); p.save(); publisher_save(publisher=p)",
            )
            assert added.returncode == 0, added.stderr
            time.sleep(1.5)  # PARTNER_CACHE_SECONDS: the server's directory of publishers reloads

            # The embedded default listens on this machine only.
            assert _listening_addresses(port) == {"0100007F"}, _listening_addresses(port)

            # The seed's curl examples, as a newcomer types them (localhost, no token).
            local = f"http://localhost:{port}"
            for postback in (SEED_POSTBACK, SEED_RECTOR_POSTBACK):
                status, body = _curl(local + postback)
                assert (status, body["status"]) == (200, "success"), body
            answers = {read: _curl(local + read) for read in SEED_READS}
            assert {read: status for read, (status, _) in answers.items()} == dict.fromkeys(SEED_READS, 200), answers
            stats = answers["/partner/involve/event/stats"][1]
            assert stats["totals"]["originals"] == 1, stats
            listed = answers["/partner/involve/event/conversions?limit=10"][1]["results"]
            assert [row["conversion_id"] for row in listed] == ["conv001"]
            assert answers["/health"][1]["status"] == "ok", answers["/health"]

            # The previous service's ten InvolveAsia postbacks, at the address the network has:
            # ten originals, then ten duplicates.
            for expected in ("success", "duplicate"):
                for n in range(10):
                    status, body = _curl(local + PREVIOUS_SERVICE_POSTBACK.format(n=n))
                    assert (status, body["status"]) == (200, expected), body

            deadline = time.monotonic() + 30
            while not any(received.query.get("c") == ["conv001"] for received in publisher.requests()):
                assert time.monotonic() < deadline, "the delivery worker sent nothing\n" + log_path.read_text()
                time.sleep(0.2)
            sent = [received for received in publisher.requests() if received.query.get("c") == ["conv001"]]
            assert sent[0].path == "/pb" and sent[0].query["s"] == ["test123"]
        finally:
            os.killpg(make.pid, signal.SIGINT)  # Ctrl-C
            try:
                make.wait(timeout=30)
            finally:
                deadline = time.monotonic() + 15
                while _group_alive(make.pid) and time.monotonic() < deadline:
                    time.sleep(0.2)
                alive = _group_alive(make.pid)
                if alive:
                    os.killpg(make.pid, signal.SIGKILL)
        assert not alive, "Ctrl-C left the server or the worker running\n" + log_path.read_text()
