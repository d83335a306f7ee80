"""Structured logs (LOG_FORMAT=json) and the protected Prometheus endpoint."""

import json
import logging
import os

import pytest

from infra.masking import access_atoms_masked, log_text_masked, url_masked
from infra.observability import CloudLoggingFormatter, PlainFormatter, trace_fields

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
    assert request_line["logging.googleapis.com/spanId"] == "0000000000000001"
    assert request_line["httpRequest"]["requestMethod"] == "GET"
    assert request_line["httpRequest"]["requestUrl"] == SEED_INVOLVE
    assert request_line["httpRequest"]["status"] == 200
    assert request_line["httpRequest"]["latency"].endswith("s")


def test_json_request_line_names_rejected_and_unknown_postbacks(client, involve, json_lines):
    assert client.get("/partner/involve/event?usd_payout=x").status_code == 400
    assert client.get("/partner/nobody/event?conversion_id=1").status_code == 404
    lines = [line for line in json_lines if line["logger"] == "postback_site.request"]
    assert [(line.get("partner"), line["outcome"], line["httpRequest"]["status"]) for line in lines] == [
        ("involve_asia", "invalid", 400),
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


TRACE = "105445aa7843bc8bf206b12000100000"


def test_cloud_trace_span_is_written_as_16_hex_digits():
    fields = trace_fields(cloud_trace=f"{TRACE}/12345678901234567890;o=1", project="acme")
    assert fields == {
        "logging.googleapis.com/trace": f"projects/acme/traces/{TRACE}",
        "logging.googleapis.com/spanId": "ab54a98ceb1f0ad2",
        "logging.googleapis.com/trace_sampled": True,
    }
    assert trace_fields(cloud_trace=f"{TRACE}/255;o=0")["logging.googleapis.com/spanId"] == "00000000000000ff"
    assert trace_fields(cloud_trace=f"{TRACE}/255;o=0")["logging.googleapis.com/trace_sampled"] is False
    without_span = trace_fields(cloud_trace=TRACE)
    assert without_span["logging.googleapis.com/trace"] == TRACE
    assert "logging.googleapis.com/spanId" not in without_span


@pytest.mark.parametrize(
    "header",
    ["", "not a trace", "abc123/7;o=1", f"{TRACE}/-1;o=1", f"{TRACE}/x;o=1", f"{TRACE}/18446744073709551616;o=1"],
)
def test_malformed_cloud_trace_headers_are_ignored(header):
    assert trace_fields(cloud_trace=header, project="p") == {}


def test_traceparent_is_read_and_preferred():
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    fields = trace_fields(traceparent=traceparent, cloud_trace=f"{TRACE}/1;o=0", project="acme")
    assert fields == {
        "logging.googleapis.com/trace": "projects/acme/traces/4bf92f3577b34da6a3ce929d0e0e4736",
        "logging.googleapis.com/spanId": "00f067aa0ba902b7",
        "logging.googleapis.com/trace_sampled": True,
    }
    unsampled = trace_fields(traceparent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-02")
    assert unsampled["logging.googleapis.com/trace_sampled"] is False
    # a later version may add fields after the flags
    assert trace_fields(traceparent="01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03-extra")


@pytest.mark.parametrize(
    "traceparent",
    [
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",  # version 00 has four fields
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # version ff is invalid
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # all-zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # all-zero span id
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  # upper case
        "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",  # short trace id
        "garbage",
    ],
)
def test_malformed_traceparent_falls_back_to_the_cloud_header(traceparent):
    assert trace_fields(traceparent=traceparent) == {}
    fields = trace_fields(traceparent=traceparent, cloud_trace=f"{TRACE}/1;o=1")
    assert fields["logging.googleapis.com/trace"] == TRACE


def test_json_request_line_reads_traceparent(client, involve, json_lines):
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
    client.get(SEED_INVOLVE, HTTP_TRACEPARENT=traceparent, HTTP_X_CLOUD_TRACE_CONTEXT=f"{TRACE}/1;o=1")
    request_line = next(line for line in json_lines if line["logger"] == "postback_site.request")
    assert request_line["logging.googleapis.com/trace"] == "projects/acme-prod/traces/4bf92f3577b34da6a3ce929d0e0e4736"
    assert request_line["logging.googleapis.com/spanId"] == "00f067aa0ba902b7"
    assert request_line["logging.googleapis.com/trace_sampled"] is False


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("/partner/x?conversion_id=1&token=s3cr3t", "/partner/x?conversion_id=1&token=****"),
        ("/partner/x?token=s3cr3t&a=1", "/partner/x?token=****&a=1"),
        ("/partner/x?%74oken=s3cr3t", "/partner/x?%74oken=****"),  # Django decodes the name to `token`
        ("/partner/x?TOKEN=s3cr3t", "/partner/x?TOKEN=****"),
        ("/partner/x?a=1;token=s3cr3t", "/partner/x?a=1;token=****"),
        # a partner's own token parameter ends in "token" (Partner.token_param): masked too
        ("/partner/x?tokens=kept&mytoken=s3", "/partner/x?tokens=kept&mytoken=****"),
        ("/partner/x/token=kept", "/partner/x/token=kept"),
    ],
)
def test_url_masked_hides_the_token_parameter(url, masked):
    assert url_masked(url) == masked


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("GET /x?token=abc&token=def 200", "GET /x?token=****&token=**** 200"),
        ("GET /x?%74oken=abc 200", "GET /x?%74oken=**** 200"),
        ('{"requestUrl": "/x?a=1&Token=abc", "b": 1}', '{"requestUrl": "/x?a=1&Token=****", "b": 1}'),
        ("failed: token=abc, retrying", "failed: token=**** retrying"),  # a comma may be part of a value
        ("GET /x?token= 200", "GET /x?token= 200"),  # nothing to mask
        ("GET /x?mytoken=abc&tokens=def 200", "GET /x?mytoken=****&tokens=def 200"),
        ("📋 原始參數: {'token': '****', 'aff_sub': 's1'}", "📋 原始參數: {'token': '****', 'aff_sub': 's1'}"),
        ("token token=abc token", "token token=**** token"),
    ],
)
def test_log_text_masks_token_values(text, masked):
    assert log_text_masked(text) == masked


def test_log_text_masks_urls_and_credential_headers():
    line = '127.0.0.1 - - "GET /partner/x?conversion_id=1&token=s3cr3t HTTP/1.1" 200'
    assert log_text_masked(line) == '127.0.0.1 - - "GET /partner/x?conversion_id=1&token=**** HTTP/1.1" 200'
    assert log_text_masked("X-Postback-Token: s3cr3t") == "X-Postback-Token: ****"
    assert log_text_masked("{'Authorization': 'Bearer s3cr3t', 'Accept': '*/*'}") == (
        "{'Authorization': '****', 'Accept': '*/*'}"
    )
    assert log_text_masked("x-postback-signature=sha256=abc") == "x-postback-signature=****"
    assert log_text_masked("nothing to see: conversion_id=1") == "nothing to see: conversion_id=1"


def test_access_log_atoms_mask_credentials():
    atoms = {
        "r": "GET /partner/x?token=s3cr3t&t%6Fken=s3cr3t HTTP/1.1",
        "q": "token=s3cr3t&a=1&t%6Fken=s3cr3t",
        "f": "https://example.com/?token=s3cr3t",
        "{x-postback-token}i": "s3cr3t",
        "{x-postback-signature}i": "sha256=abc",
        "{authorization}i": "Bearer s3cr3t",
        "{http_x_postback_token}e": "s3cr3t",
        "{raw_uri}e": "/partner/x?token=s3cr3t",
        "{user-agent}i": "curl/8",
        "s": 200,
    }
    masked = access_atoms_masked(atoms)
    assert "s3cr3t" not in json.dumps(masked)
    assert masked["r"] == "GET /partner/x?token=****&t%6Fken=**** HTTP/1.1"
    assert masked["q"] == "token=****&a=1&t%6Fken=****"
    assert masked["{x-postback-token}i"] == masked["{authorization}i"] == masked["{http_x_postback_token}e"] == "****"
    assert masked["{user-agent}i"] == "curl/8" and masked["s"] == 200


def test_json_request_line_masks_the_token(client, involve, json_lines):
    response = client.get("/partner/involve/event?conversion_id=obs-t1&token=not-the-secret-1234")
    assert response.status_code == 200
    request_line = next(line for line in json_lines if line["logger"] == "postback_site.request")
    assert request_line["httpRequest"]["requestUrl"] == "/partner/involve/event?conversion_id=obs-t1&token=****"
    assert request_line["message"] == "GET /partner/involve/event?conversion_id=obs-t1&token=**** 200"


def test_json_lines_mask_the_partners_secret_anywhere_in_the_url(client, involve, json_lines):
    from partners.services import partner_secret_rotate

    secret = partner_secret_rotate(partner=involve)
    response = client.get(f"/partner/involve/event?conversion_id=obs-t2&token={secret}&aff_sub={secret}")
    assert response.status_code == 200
    lines = [json.dumps(line) for line in json_lines]
    assert lines and not any(secret in line for line in lines)
    request_line = next(line for line in json_lines if line["logger"] == "postback_site.request")
    assert (
        request_line["httpRequest"]["requestUrl"]
        == "/partner/involve/event?conversion_id=obs-t2&token=****&aff_sub=****"
    )


def test_formatters_mask_tokens_in_any_message():
    record = logging.LogRecord("x", logging.ERROR, "", 0, "failed GET %s", ("/partner/x?token=s3cr3t",), None)
    assert PlainFormatter().format(record).endswith("failed GET /partner/x?token=****")
    assert json.loads(CloudLoggingFormatter().format(record))["message"] == "failed GET /partner/x?token=****"


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


def test_metrics_allowlist_reads_entries_as_a_partner_allowlist_does(client, settings):
    # As django-environ splits "10.0.0.0/8, 127.0.0.1": the second entry keeps its space.
    settings.METRICS_ALLOWED_IPS = ["10.0.0.0/8", " 192.0.2.7", "not-an-address"]
    assert client.get("/metrics", REMOTE_ADDR="192.0.2.7").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="::ffff:10.1.2.3").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="192.0.2.8").status_code == 403


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
    for outcome, added in (("success", 1), ("duplicate", 1), ("updated", 1), ("invalid", 1)):
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
    from infra.observability import RequestBufferedHandler

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
    record = logging.LogRecord("conversions.ingest", logging.INFO, "", 0, "步驟%d", (1,), None)
    text = PlainFormatter().format(record)
    assert text.endswith(" INFO conversions.ingest 步驟1")
    assert len(text.split(" ")[1].split(",")[1]) == 3  # milliseconds
