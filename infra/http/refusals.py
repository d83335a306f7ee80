"""What the server answers itself, in JSON, for a request it refuses before the application sees it."""

import json
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from gunicorn import util
from gunicorn.http import errors as http_errors

from infra.http.limits import MAX_HEAD_BYTES, BodyLimit, EdgeLimits, request_line_limit

# Header names gunicorn itself refuses, safe to name in an answer (never header values).
FRAMING_HEADERS = frozenset({"HOST", "CONTENT-TYPE", "CONTENT-LENGTH", "TRANSFER-ENCODING"})


@dataclass(eq=False)
class EdgeRefusal(Exception):
    """A request the server answers itself, before (or instead of) the application."""

    status: int
    reason: str
    message: str
    errors: dict[str, str] = field(default_factory=dict)

    def response(self) -> bytes:
        """The whole HTTP answer: JSON, and the connection closes after it."""
        body: dict[str, Any] = {"status": "error", "reason": self.reason, "message": self.message}
        if self.errors:
            body["errors"] = self.errors
        payload = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        head = (
            f"HTTP/1.1 {self.status} {HTTPStatus(self.status).phrase}\r\n"
            f"Date: {util.http_date()}\r\n"
            "Connection: close\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n"
        )
        return head.encode("latin-1") + payload


def body_too_large(limit: BodyLimit) -> EdgeRefusal:
    """The 413 for a body over `limit`: the number of bytes, and the setting that raises it."""
    return EdgeRefusal(
        413,
        "body_too_large",
        f"The request body is over the limit of {limit.max_bytes} bytes ({limit.setting})",
        {"body": f"is over {limit.max_bytes} bytes"},
    )


def refusal_for(exc: BaseException, *, cfg: Any, limits: EdgeLimits | None) -> EdgeRefusal:
    """The JSON answer for an error gunicorn raised while reading a request (500 for anything else).

    Messages never repeat header values or the request line: they may carry secrets.
    """
    if isinstance(exc, EdgeRefusal):
        return exc
    if isinstance(exc, http_errors.InvalidResponseHeader | http_errors.InvalidResponseHeaderName):
        return EdgeRefusal(500, "internal_error", "Internal server error")
    if isinstance(exc, http_errors.LimitRequestLine):
        return EdgeRefusal(
            414, "request_line_too_long", f"The request line is longer than {request_line_limit(cfg)} bytes"
        )
    if isinstance(exc, http_errors.LimitRequestHeaders):
        if str(exc) == "limit request headers fields":
            message = f"The request has more than {cfg.limit_request_fields} header fields"
        elif str(exc) == "limit request headers fields size":
            message = f"A header field is longer than {cfg.limit_request_field_size} bytes"
        else:
            head = limits.max_head_bytes if limits else MAX_HEAD_BYTES
            message = f"The request headers are larger than {head} bytes"
        return EdgeRefusal(431, "headers_too_large", message)
    if isinstance(exc, http_errors.InvalidRequestMethod):
        return EdgeRefusal(400, "request_line_invalid", "Invalid request method")
    if isinstance(exc, http_errors.InvalidHTTPVersion):
        return EdgeRefusal(400, "request_line_invalid", "Unsupported HTTP version (send HTTP/1.0 or HTTP/1.1)")
    if isinstance(exc, http_errors.InvalidRequestLine):
        return EdgeRefusal(
            400,
            "request_line_invalid",
            "Invalid request line: expected 'METHOD /path HTTP/1.1', with the target percent-encoded",
        )
    if isinstance(exc, http_errors.UnsupportedTransferCoding):
        return EdgeRefusal(501, "transfer_coding_unsupported", "Only the chunked transfer coding is supported")
    if isinstance(exc, http_errors.ExpectationFailed):
        return EdgeRefusal(417, "expectation_failed", "Only 'Expect: 100-continue' is supported")
    if isinstance(exc, http_errors.ObsoleteFolding):
        return EdgeRefusal(400, "header_invalid", "A header field is folded over several lines (obsolete)")
    if isinstance(exc, http_errors.InvalidSchemeHeaders):
        return EdgeRefusal(400, "header_invalid", "Contradictory scheme headers")
    if isinstance(exc, http_errors.InvalidHeaderName):
        return EdgeRefusal(400, "header_invalid", "Invalid header field name")
    if isinstance(exc, http_errors.InvalidHeader):
        if exc.hdr == "bare LF as line terminator":
            return EdgeRefusal(400, "header_invalid", "Lines of the request head must end with CRLF")
        name = exc.hdr if exc.hdr in FRAMING_HEADERS else ""
        return EdgeRefusal(
            400, "header_invalid", f"Invalid or repeated {name} header" if name else "Invalid header field"
        )
    if isinstance(exc, http_errors.ParseException):
        return EdgeRefusal(400, "request_invalid", "Invalid request")
    return EdgeRefusal(500, "internal_error", "Internal server error")
