"""What we read of an HTTP request besides its parameters: the client's address, the declared charset.

Shared by the ingest (what a postback stores), the logs and the metrics endpoint; the
credentials it carries are masked by infra/masking.py.
"""

import codecs
import ipaddress
from collections.abc import Callable, Iterable, Mapping
from typing import Any


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


def request_client_ip(request: Any) -> str | None:
    """The request's client address (see client_ip), worked out once per request."""
    try:
        return request.postback_client_ip
    except AttributeError:
        from django.conf import settings

        address = request.postback_client_ip = client_ip(request.META, trusted_proxies=settings.TRUSTED_PROXY_COUNT)
        return address


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


# --- The declared charset -----------------------------------------------------------

CHARSET_REFUSED = "postback.charset_refused"


def text_encoding(name: str) -> str | None:
    """The codec name of `name` when it is a text encoding (rot13 and base64 are not), else None."""
    try:
        b"a".decode(name, "ignore")  # (empty input would skip the codec check)
        return codecs.lookup(name).name
    except LookupError:
        return None


def charset_checked(application: Callable) -> Callable:
    """`application` behind the Content-Type charset check described above."""

    def checked(environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        content_type = environ.get("CONTENT_TYPE", "")
        if "charset" in content_type.lower():
            kept, refused = [], None
            for part in content_type.split(";"):
                name, _, value = part.partition("=")
                if name.strip().lower() == "charset" and text_encoding(value.strip().strip('"')) is None:
                    refused = value.strip().strip('"')
                else:
                    kept.append(part)
            if refused is not None:
                environ = {**environ, "CONTENT_TYPE": ";".join(kept), CHARSET_REFUSED: refused}
        return application(environ, start_response)

    return checked
