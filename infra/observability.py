"""Request context for logs and metrics: Cloud Logging JSON lines, per-postback metrics.

`ObservabilityMiddleware` opens a context per request (trace id, httpRequest fields);
the postback view names its partner with `postback_observe`; when the response leaves,
the middleware records the postback metrics and, with LOG_FORMAT=json, one request line.
"""

import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from django.conf import settings
from django.http import HttpRequest, HttpResponse

from infra import metrics
from infra.masking import MASK, log_text_masked, url_masked
from infra.request_meta import request_client_ip

request_logger = logging.getLogger("postback_site.request")

_context: ContextVar[dict[str, Any] | None] = ContextVar("postback_request_context", default=None)


def postback_observe(partner: Any) -> None:
    """Attach the partner to the current request's logs and metrics; from now on its
    lines show the URL with the partner's secret masked wherever it appears."""
    context = _context.get()
    if context is not None:
        context["partner"] = partner.partner_code
        context["database_alias"] = partner.database_name
        secret = getattr(partner, "postback_secret", "")
        if secret:
            http_request = context["httpRequest"]
            url = http_request["requestUrl"]
            for form in {secret, quote(secret, safe="")}:
                url = url.replace(form, MASK)
            http_request["requestUrl"] = url


def postback_outcome_observe(outcome: str) -> None:
    """Name the current postback's outcome (an Outcome's label) for logs and metrics."""
    context = _context.get()
    if context is not None:
        context["outcome"] = outcome


_CLOUD_TRACE = re.compile(r"([0-9a-fA-F]{32})(?:/([0-9]{1,20}))?(?:;o=([0-9]+))?")
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")


def trace_fields(*, cloud_trace: str = "", traceparent: str = "", project: str = "") -> dict[str, Any]:
    """Cloud Logging trace fields from a W3C `traceparent` (preferred when valid) or an
    `X-Cloud-Trace-Context: TRACE/SPAN;o=1` header; malformed values are ignored.

    Cloud Logging wants the span id as 16 hex digits: X-Cloud-Trace-Context's decimal
    span is converted, traceparent's is already hex.
    """
    parsed = _traceparent_parse(traceparent) or _cloud_trace_parse(cloud_trace)
    if parsed is None:
        return {}
    trace_id, span_id, sampled = parsed
    fields: dict[str, Any] = {
        "logging.googleapis.com/trace": f"projects/{project}/traces/{trace_id}" if project else trace_id
    }
    if span_id:
        fields["logging.googleapis.com/spanId"] = span_id
    fields["logging.googleapis.com/trace_sampled"] = sampled
    return fields


def _traceparent_parse(header: str) -> tuple[str, str, bool] | None:
    """(trace id, span id, sampled) of a W3C traceparent `00-<32 hex>-<16 hex>-<flags>`."""
    match = _TRACEPARENT.fullmatch(header.strip())
    if match is None:
        return None
    version, trace_id, span_id, flags, rest = match.groups()
    # Version ff is invalid; version 00 has exactly four fields; all-zero ids are invalid.
    if version == "ff" or (version == "00" and rest) or not trace_id.strip("0") or not span_id.strip("0"):
        return None
    return trace_id, span_id, bool(int(flags, 16) & 1)


def _cloud_trace_parse(header: str) -> tuple[str, str, bool] | None:
    """(trace id, span id as 16 hex digits or "", sampled) of `TRACE/SPAN;o=1`."""
    match = _CLOUD_TRACE.fullmatch(header.strip())
    if match is None:
        return None
    trace_id, span, options = match.groups()
    span_id = ""
    if span is not None:
        number = int(span)
        if number >= 2**64:
            return None
        span_id = f"{number:016x}" if number else ""
    return trace_id.lower(), span_id, options == "1"


def postback_outcome(response: HttpResponse, observed: str | None) -> str:
    """The outcome the postback pipeline named (conversions/outcomes.py), or, for an
    answer it did not name, one for the status code."""
    return observed or f"http_{response.status_code}"


class ObservabilityMiddleware:
    """Per-request context for logs; postback metrics and the JSON request line."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        meta = request.META
        http_request = {
            "requestMethod": request.method,
            "requestUrl": url_masked(request.get_full_path()),
            "remoteIp": request_client_ip(request),
            "userAgent": meta.get("HTTP_USER_AGENT", ""),
            "protocol": meta.get("SERVER_PROTOCOL", ""),
        }
        context: dict[str, Any] = {
            "httpRequest": http_request,
            **trace_fields(
                cloud_trace=meta.get("HTTP_X_CLOUD_TRACE_CONTEXT", ""),
                traceparent=meta.get("HTTP_TRACEPARENT", ""),
                project=settings.GOOGLE_CLOUD_PROJECT,
            ),
        }
        token = _context.set(context)
        RequestBufferedHandler.start_request()
        try:
            response = self.get_response(request)
            elapsed = time.perf_counter() - started
            match = request.resolver_match
            if match is not None and match.url_name == "postback":
                context["outcome"] = outcome = postback_outcome(response, context.get("outcome"))
                partner = context.get("partner", "unknown")
                metrics.postback_record(
                    partner=partner,
                    outcome=outcome,
                    seconds=elapsed,
                    database_alias=context.get("database_alias") if outcome == "unavailable" else None,
                )
            if settings.LOG_FORMAT == "json":
                http_request.update(status=response.status_code, latency=f"{elapsed:.6f}s")
                request_logger.info("%s %s %s", request.method, http_request["requestUrl"], response.status_code)
            return response
        finally:
            _context.reset(token)
            RequestBufferedHandler.end_request()


class PlainFormatter(logging.Formatter):
    """`time LEVEL logger message`, formatting the timestamp once per second, not per record."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")
        self._stamp = (-1, "")  # (second, text), replaced as one object so threads never mix them

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802 (logging API)
        second = int(record.created)
        cached_second, text = self._stamp
        if second != cached_second:
            text = time.strftime("%Y-%m-%d %H:%M:%S", self.converter(second))
            self._stamp = (second, text)
        return f"{text},{int(record.msecs):03d}"

    def format(self, record: logging.LogRecord) -> str:
        return log_text_masked(super().format(record))


class RequestBufferedHandler(logging.Handler):
    """Writes a request's log lines to stderr in one write() when the request ends.

    The step logs are ~20 lines per postback; one system call instead of twenty keeps
    them cheap. Lines outside a request, and WARNING and above, are written at once;
    writes are cut at line boundaries under PIPE_BUF so workers never interleave a line.
    """

    CHUNK = 4096
    _local = threading.local()
    _instances: list["RequestBufferedHandler"] = []

    def __init__(self, fd: int | None = None) -> None:
        super().__init__()
        self.fd = sys.stderr.fileno() if fd is None else fd
        self._pending = threading.local()
        RequestBufferedHandler._instances.append(self)

    @classmethod
    def start_request(cls) -> None:
        cls._local.active = True

    @classmethod
    def end_request(cls) -> None:
        cls._local.active = False
        for handler in cls._instances:
            handler.flush()

    def handle(self, record: logging.LogRecord) -> bool:
        # No handler lock: lines collect per thread and each write() is whole, so request
        # threads never wait on each other to log.
        if self.filter(record):
            self.emit(record)
            return True
        return False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = (self.format(record) + "\n").encode("utf-8", "replace")
        except Exception:
            self.handleError(record)
            return
        lines = getattr(self._pending, "lines", None)
        if lines is None:
            lines = self._pending.lines = []
        lines.append(line)
        if record.levelno >= logging.WARNING or not getattr(self._local, "active", False):
            self.flush()

    def flush(self) -> None:
        lines = getattr(self._pending, "lines", None)
        if not lines:
            return
        self._pending.lines = []
        chunk = b""
        for line in lines:
            if chunk and len(chunk) + len(line) > self.CHUNK:
                self._write(chunk)
                chunk = b""
            chunk += line
        self._write(chunk)

    def _write(self, data: bytes) -> None:
        try:
            while data:
                data = data[os.write(self.fd, data) :]
        except OSError:
            pass  # a closed stderr must not fail the request


class CloudLoggingFormatter(logging.Formatter):
    """One JSON object per line, in the fields Cloud Logging reads from stdout/stderr."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message = f"{message}\n{self.formatException(record.exc_info)}"
        entry: dict[str, Any] = {
            "severity": record.levelname,
            "message": message,
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "logger": record.name,
        }
        context = _context.get()
        if context is not None:
            entry.update(context)
            entry.pop("database_alias", None)
        return log_text_masked(json.dumps(entry, ensure_ascii=False, default=str))
