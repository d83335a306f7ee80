"""Request context for logs and metrics: Cloud Logging JSON lines, per-postback metrics.

`ObservabilityMiddleware` opens a context per request (trace id, httpRequest fields);
the postback view names its partner with `postback_observe`; when the response leaves,
the middleware records the postback metrics and, with LOG_FORMAT=json, one request line.
"""

import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse

from conversions.request_meta import client_ip
from postback_site import metrics

request_logger = logging.getLogger("postback_site.request")

_context: ContextVar[dict[str, Any] | None] = ContextVar("postback_request_context", default=None)

# Outcome label of a postback answered with something other than 200.
STATUS_OUTCOMES = {
    400: "rejected",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    429: "rate_limited",
    503: "unavailable",
}


def postback_observe(partner: Any) -> None:
    """Attach the partner to the current request's logs and metrics."""
    context = _context.get()
    if context is not None:
        context["partner"] = partner.partner_code
        context["database_alias"] = partner.database_name


def postback_outcome_observe(outcome: str) -> None:
    """Name the current postback's outcome (`success`, `duplicate`, `updated`) for logs and metrics."""
    context = _context.get()
    if context is not None:
        context["outcome"] = outcome


def trace_fields(header: str, project: str) -> dict[str, Any]:
    """Cloud Logging trace fields from an `X-Cloud-Trace-Context: TRACE/SPAN;o=1` header."""
    if not header:
        return {}
    trace_id, _, rest = header.partition("/")
    if not trace_id.isalnum():
        return {}
    span, _, options = rest.partition(";")
    trace = f"projects/{project}/traces/{trace_id}" if project else trace_id
    fields: dict[str, Any] = {"logging.googleapis.com/trace": trace}
    if span.isdigit():
        fields["logging.googleapis.com/spanId"] = span
    fields["logging.googleapis.com/trace_sampled"] = options.strip() == "o=1"
    return fields


def postback_outcome(response: HttpResponse, observed: str | None) -> str:
    """The outcome the view observed for a 200 (`success`, `duplicate`, `updated`), else a
    name for the status code."""
    if response.status_code == 200:
        return observed or "ok"
    return STATUS_OUTCOMES.get(response.status_code, f"http_{response.status_code}")


class ObservabilityMiddleware:
    """Per-request context for logs; postback metrics and the JSON request line."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        meta = request.META
        http_request = {
            "requestMethod": request.method,
            "requestUrl": request.get_full_path(),
            "remoteIp": client_ip(meta, trusted_proxies=settings.TRUSTED_PROXY_COUNT),
            "userAgent": meta.get("HTTP_USER_AGENT", ""),
            "protocol": meta.get("SERVER_PROTOCOL", ""),
        }
        context: dict[str, Any] = {
            "httpRequest": http_request,
            **trace_fields(meta.get("HTTP_X_CLOUD_TRACE_CONTEXT", ""), settings.GOOGLE_CLOUD_PROJECT),
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
        return json.dumps(entry, ensure_ascii=False, default=str)
