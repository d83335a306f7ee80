"""How long and how much the worker waits for a request before refusing it (GUNICORN_*_TIMEOUT)."""

import os
from dataclasses import dataclass
from typing import Any

from gunicorn.http.message import MAX_REQUEST_LINE

# Largest request head (request line and headers) kept in memory; larger is a 431.
MAX_HEAD_BYTES = 65536


@dataclass(frozen=True)
class EdgeLimits:
    """How long and how much the worker waits for a request before refusing it."""

    header_timeout: float
    body_timeout: float
    send_timeout: float
    max_body_bytes: int
    max_head_bytes: int = MAX_HEAD_BYTES

    @classmethod
    def from_env(cls, *, max_body_bytes: int) -> "EdgeLimits":
        """Limits from GUNICORN_HEADER_TIMEOUT, GUNICORN_BODY_TIMEOUT and GUNICORN_SEND_TIMEOUT (seconds)."""
        return cls(
            header_timeout=_positive_seconds("GUNICORN_HEADER_TIMEOUT", "10"),
            body_timeout=_positive_seconds("GUNICORN_BODY_TIMEOUT", "30"),
            send_timeout=_positive_seconds("GUNICORN_SEND_TIMEOUT", "10"),
            max_body_bytes=max_body_bytes,
        )


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
