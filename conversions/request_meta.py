"""What we keep of the HTTP request around a postback: client address and headers."""

import ipaddress
from collections.abc import Mapping

SENSITIVE_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "cookie", "set-cookie", "x-postback-token", "x-postback-signature"}
)
SENSITIVE_HEADER_WORDS = ("secret", "token", "password", "api-key", "apikey", "signature")
MASK = "****"


def client_ip(meta: Mapping[str, str], *, trusted_proxies: int) -> str | None:
    """The client's address: REMOTE_ADDR, or the X-Forwarded-For entry our proxies added.

    Each trusted proxy appends the address it received the request from, so with N
    trusted proxies the client is the N-th entry from the right; anything further left
    was written by the client itself and is ignored.
    """
    remote = meta.get("REMOTE_ADDR") or None
    if trusted_proxies > 0:
        forwarded = [part.strip() for part in meta.get("HTTP_X_FORWARDED_FOR", "").split(",") if part.strip()]
        if len(forwarded) >= trusted_proxies:
            candidate = forwarded[-trusted_proxies]
            if _is_ip(candidate):
                return candidate
    return remote


def headers_for_storage(headers: Mapping[str, str]) -> dict[str, str]:
    """Request headers with credentials and secrets masked."""
    stored = {}
    for name, value in headers.items():
        lowered = name.lower()
        if lowered in SENSITIVE_HEADERS or any(word in lowered for word in SENSITIVE_HEADER_WORDS):
            value = MASK
        stored[name] = value
    return stored


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True
