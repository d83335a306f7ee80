"""What we keep of the HTTP request around a postback: client address and headers."""

import ipaddress
from collections.abc import Mapping
from typing import Any

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


SECRET_PARAMS = frozenset({"token"})


def secret_masked(value: Any, *, secret: str) -> Any:
    """`value` (params or headers, nested) with the `token` parameter masked and, when the
    partner has a secret, every occurrence of it replaced: it must never be stored or logged."""
    if isinstance(value, str):
        return value.replace(secret, MASK) if secret and secret in value else value
    if isinstance(value, dict):
        return {
            secret_masked(key, secret=secret): MASK
            if isinstance(key, str) and key.lower() in SECRET_PARAMS
            else secret_masked(item, secret=secret)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [secret_masked(item, secret=secret) for item in value]
    return value
