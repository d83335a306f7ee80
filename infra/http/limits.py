"""How long and how much the worker waits for a request before refusing it (GUNICORN_*_TIMEOUT,
POSTBACK_MAX_BODY_BYTES, ADMIN_UPLOAD_MAX_BYTES)."""

import os
from dataclasses import dataclass
from typing import Any

from gunicorn import util
from gunicorn.http.message import MAX_REQUEST_LINE

# Largest request head (request line and headers) kept in memory; larger is a 431.
MAX_HEAD_BYTES = 65536
# Where postback_site/urls.py serves the admin: requests under it may carry uploads of up
# to ADMIN_UPLOAD_MAX_BYTES; every other path (postbacks, /health, /metrics, /api/...)
# has POSTBACK_MAX_BODY_BYTES.
ADMIN_PATH_PREFIX = "/admin/"
# A body larger than this is written to a temporary file as it arrives, not kept in memory.
BODY_MEMORY_BYTES = 1 << 20
# Each byte of a body received moves its deadline on by 1 / BODY_MIN_RATE seconds: a
# client that keeps sending at least this many bytes a second (512 kbit/s) is never cut
# off, one that trickles is after about GUNICORN_BODY_TIMEOUT.
BODY_MIN_RATE = 65536


@dataclass(frozen=True)
class BodyLimit:
    """The largest body a request may carry, and the setting that says so."""

    max_bytes: int
    setting: str
    admin: bool  # a request to the admin (the worker refuses its body past the limit itself)


@dataclass(frozen=True)
class EdgeLimits:
    """How long and how much the worker waits for a request before refusing it."""

    header_timeout: float
    body_timeout: float
    send_timeout: float
    max_body_bytes: int
    max_admin_body_bytes: int
    max_head_bytes: int = MAX_HEAD_BYTES
    body_min_rate: int = BODY_MIN_RATE

    @classmethod
    def from_env(cls, *, max_body_bytes: int, max_admin_body_bytes: int) -> "EdgeLimits":
        """Limits from GUNICORN_HEADER_TIMEOUT, GUNICORN_BODY_TIMEOUT and GUNICORN_SEND_TIMEOUT (seconds)."""
        return cls(
            header_timeout=_positive_seconds("GUNICORN_HEADER_TIMEOUT", "10"),
            body_timeout=_positive_seconds("GUNICORN_BODY_TIMEOUT", "30"),
            send_timeout=_positive_seconds("GUNICORN_SEND_TIMEOUT", "10"),
            max_body_bytes=max_body_bytes,
            max_admin_body_bytes=max_admin_body_bytes,
        )

    def body_limit(self, path_info: str) -> BodyLimit:
        """The body limit of a request to `path_info` (as the application will see it)."""
        if path_info.startswith(ADMIN_PATH_PREFIX):
            return BodyLimit(self.max_admin_body_bytes, "ADMIN_UPLOAD_MAX_BYTES", admin=True)
        return BodyLimit(self.max_body_bytes, "POSTBACK_MAX_BODY_BYTES", admin=False)

    def body_seconds(self, received: int) -> float:
        """How long a body may take, from the end of its head, once `received` bytes of it have arrived."""
        return self.body_timeout + received / self.body_min_rate


def _positive_seconds(name: str, default: str) -> float:
    text = os.environ.get(name, default)
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise RuntimeError(f"{name} must be a number of seconds above 0, not {text!r}")
    return seconds


def request_line_limit(cfg: Any) -> int:
    """The longest request line gunicorn accepts with this configuration."""
    limit = cfg.limit_request_line
    return MAX_REQUEST_LINE if limit <= 0 or limit > MAX_REQUEST_LINE else limit


def request_path_info(path: str, headers: list[tuple[str, str]]) -> str:
    """The PATH_INFO the application will be given for a request to `path`, so that the
    limit follows the path Django routes: percent-decoded, without the SCRIPT_NAME a
    trusted proxy's header names (as gunicorn 27.0.1's wsgi.create() computes it; the
    service is served at the root, so a SCRIPT_NAME in gunicorn's environment is not read)."""
    script_name = ""
    for name, value in headers:
        if name == "SCRIPT_NAME":
            script_name = value
    if script_name and path.startswith(script_name):
        path = path[len(script_name) :]
    return util.unquote_to_wsgi_str(path)
