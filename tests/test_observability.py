"""Structured logs (LOG_FORMAT=json) and the protected Prometheus endpoint."""

import json
import logging
import os

import pytest

from postback_site.observability import CloudLoggingFormatter, trace_fields

SEED_INVOLVE = "/partner/involve/event?conversion_id=obs1&aff_sub=s1&usd_payout=1.5"


@pytest.fixture
def json_lines(settings):
    """Capture log records formatted by the JSON formatter, as parsed objects."""
    settings.LOG_FORMAT = "json"
    settings.GOOGLE_CLOUD_PROJECT = "acme-prod"
    formatter = CloudLoggingFormatter()
    lines: list[dict] = []

    class Collect(logging.Handler):
        def emit(self, record):
            text = formatter.format(record)
            assert "\n" not in text
            lines.append(json.loads(text))

    handler = Collect(level=logging.INFO)
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield lines
    root.removeHandler(handler)
    root.setLevel(previous)


def test_json_logs_carry_cloud_logging_fields_partner_and_outcome(client, involve, json_lines):
    response = client.get(SEED_INVOLVE, HTTP_X_CLOUD_TRACE_CONTEXT="105445aa7843bc8bf206b12000100000/1;o=1")
    assert response.status_code == 200
    steps = [line for line in json_lines if line["logger"] == "conversions.ingest"]
    assert len(steps) == 1  # the step logs of one postback are one entry
    assert steps[0]["message"].splitlines()[0] == "🚀 開始處理動態Partner Postback: endpoint_path=involve/event"
    assert steps[0]["message"].splitlines()[-1].startswith("🎉 Partner Postback處理完成")
    assert steps[0]["partner"] == "involve_asia"
    request_line = next(line for line in json_lines if line["logger"] == "postback_site.request")
    assert request_line["severity"] == "INFO"
    assert request_line["partner"] == "involve_asia"
    assert request_line["outcome"] == "success"
    assert request_line["logging.googleapis.com/trace"] == "projects/acme-prod/traces/105445aa7843bc8bf206b12000100000"
    assert request_line["logging.googleapis.com/spanId"] == "1"
    assert request_line["httpRequest"]["requestMethod"] == "GET"
    assert request_line["httpRequest"]["requestUrl"] == SEED_INVOLVE
    assert request_line["httpRequest"]["status"] == 200
    assert request_line["httpRequest"]["latency"].endswith("s")


def test_json_request_line_names_rejected_and_unknown_postbacks(client, involve, json_lines):
    assert client.get("/partner/involve/event?usd_payout=x").status_code == 400
    assert client.get("/partner/nobody/event?conversion_id=1").status_code == 404
    lines = [line for line in json_lines if line["logger"] == "postback_site.request"]
    assert [(line.get("partner"), line["outcome"], line["httpRequest"]["status"]) for line in lines] == [
        ("involve_asia", "rejected", 400),
        (None, "not_found", 404),
    ]


def test_error_records_keep_the_traceback_in_one_line():
    formatter = CloudLoggingFormatter()
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), exc_info=__import__("sys").exc_info())
    entry = json.loads(formatter.format(record))
    assert entry["severity"] == "ERROR"
    assert entry["message"].startswith("failed\nTraceback")
    assert "ValueError: boom" in entry["message"]


def test_trace_header_without_project_or_malformed():
    assert trace_fields("abc123/7;o=0", "")["logging.googleapis.com/trace"] == "abc123"
    assert trace_fields("abc123/7;o=0", "")["logging.googleapis.com/trace_sampled"] is False
    assert trace_fields("not a trace", "p") == {}
    assert trace_fields("", "p") == {}


def test_metrics_refused_without_configuration(client):
    response = client.get("/metrics")
    assert response.status_code == 403
    assert "METRICS_TOKEN" in response.json()["message"]


def test_metrics_need_the_bearer_token(client, settings):
    settings.METRICS_TOKEN = "m-secret"
    response = client.get("/metrics")
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer m-secret").status_code == 200


def test_metrics_for_an_allowed_address(client, settings):
    settings.METRICS_ALLOWED_IPS = ["10.0.0.0/8"]
    assert client.get("/metrics", REMOTE_ADDR="10.1.2.3").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="192.0.2.1").status_code == 403


def sample(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{key}="{value}"' in line for key, value in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_count_postbacks_by_partner_and_outcome(client, involve, settings, backend):
    settings.METRICS_TOKEN = "m-secret"
    auth = {"HTTP_AUTHORIZATION": "Bearer m-secret"}
    before = client.get("/metrics", **auth).content.decode()
    client.get("/partner/involve/event?conversion_id=m1&conversion_status=pending")
    client.get("/partner/involve/event?conversion_id=m1&conversion_status=pending")
    client.get("/partner/involve/event?conversion_id=m1&conversion_status=approved")
    client.get("/partner/involve/event?usd_payout=bad")
    text = client.get("/metrics", **auth).content.decode()
    assert text.startswith("# HELP") or "# HELP" in text
    for outcome, added in (("success", 1), ("duplicate", 1), ("updated", 1), ("rejected", 1)):
        name = "postback_requests_total"
        labels = {"partner": "involve_asia", "outcome": outcome}
        assert sample(text, name, **labels) - sample(before, name, **labels) == added
    histogram = "postback_request_duration_seconds_count"
    assert sample(text, histogram, partner="involve_asia") - sample(before, histogram, partner="involve_asia") == 4


def test_metrics_count_database_errors_by_alias(client, live_db, settings):
    from partners.services import partner_create

    settings.METRICS_TOKEN = "m-secret"
    partner_create(
        partner_code="gone",
        partner_name="Gone",
        endpoint_path="/gone/event",
        database_name="gone_db",
        database_url="postgres://root@127.0.0.1:1/gone",
    )
    auth = {"HTTP_AUTHORIZATION": "Bearer m-secret"}
    before = sample(client.get("/metrics", **auth).content.decode(), "postback_database_errors_total", alias="gone_db")
    assert client.get("/partner/gone/event?conversion_id=g1").status_code == 503
    text = client.get("/metrics", **auth).content.decode()
    assert sample(text, "postback_database_errors_total", alias="gone_db") - before == 1
    assert sample(text, "postback_requests_total", partner="gone", outcome="unavailable") >= 1


def test_request_lines_are_written_together_when_the_request_ends():
    from postback_site.observability import RequestBufferedHandler

    read_fd, write_fd = os.pipe()
    handler = RequestBufferedHandler(fd=write_fd)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log = logging.getLogger("tests.buffered")
    log.addHandler(handler)
    log.propagate = False
    log.setLevel(logging.INFO)
    try:
        log.info("outside a request")  # written at once
        assert os.read(read_fd, 65536) == b"outside a request\n"
        RequestBufferedHandler.start_request()
        log.info("step 1")
        log.info("step 2")
        os.set_blocking(read_fd, False)
        with pytest.raises(BlockingIOError):
            os.read(read_fd, 65536)
        log.warning("a warning flushes")
        assert os.read(read_fd, 65536) == b"step 1\nstep 2\na warning flushes\n"
        for index in range(300):
            log.info("line %03d %s", index, "x" * 40)
        RequestBufferedHandler.end_request()
        data = os.read(read_fd, 1 << 20)
        assert data.splitlines() == [f"line {i:03d} {'x' * 40}".encode() for i in range(300)]
    finally:
        RequestBufferedHandler.end_request()
        log.removeHandler(handler)
        RequestBufferedHandler._instances.remove(handler)
        os.close(read_fd)
        os.close(write_fd)


def test_plain_format_keeps_time_level_logger_message():
    from postback_site.observability import PlainFormatter

    record = logging.LogRecord("conversions.ingest", logging.INFO, "", 0, "步驟%d", (1,), None)
    text = PlainFormatter().format(record)
    assert text.endswith(" INFO conversions.ingest 步驟1")
    assert len(text.split(" ")[1].split(",")[1]) == 3  # milliseconds
