"""Who may post for a partner: its IP allowlist and its secret (token or HMAC signature).

Pure checks on the request and the cached Partner: no database work, constant-time
comparisons, allowlists parsed once per loaded partner configuration.
"""

import hashlib
import hmac
import ipaddress
import logging
from collections.abc import Mapping
from typing import Any

from conversions.rejections import PostbackRejection
from partners.models import Partner

logger = logging.getLogger("conversions.security")

TOKEN_PARAM = "token"  # noqa: S105 (a parameter name, not a password)
TOKEN_HEADER = "X-Postback-Token"  # noqa: S105 (a header name)
SIGNATURE_HEADER = "X-Postback-Signature"
SIGNATURE_PREFIX = "sha256="


def postback_access_check(
    *,
    partner: Partner,
    client_ip: str | None,
    params: Mapping[str, Any],
    headers: Mapping[str, str],
    query_string: bytes,
    body: bytes,
) -> PostbackRejection | None:
    """None when the client may post for `partner`, else why not (a 403)."""
    rejection = _allowlist_check(partner, client_ip)
    if rejection is None and partner.postback_secret:
        rejection = _secret_check(partner, params, headers, query_string, body)
    return rejection


def postback_signature(*, secret: str, query_string: bytes, body: bytes) -> str:
    """The `X-Postback-Signature` value for a request: HMAC-SHA256 of what it sends.

    The raw query string when there is no body, the raw body when there is no query
    string, and `<query string>\\n<body>` when there are both (a query string never
    contains a raw newline, so the two parts cannot be shifted into each other).
    """
    if query_string and body:
        message = query_string + b"\n" + body
    else:
        message = body or query_string
    return SIGNATURE_PREFIX + hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def _allowlist_check(partner: Partner, client_ip: str | None) -> PostbackRejection | None:
    if not partner.allowed_ips.strip():
        return None
    try:
        networks = partner.allowed_networks
    except ValueError:
        # A list that cannot be read must not fall open to "anyone".
        logger.error("partner=%s has an unreadable IP allowlist; refusing every client", partner.partner_code)
        networks = ()
    address = _parse_ip(client_ip)
    if address is not None and any(address in network for network in networks if network.version == address.version):
        return None
    return PostbackRejection(
        reason="ip_not_allowed",
        message=f"Client address {client_ip or 'unknown'} is not allowed to post for partner '{partner.partner_code}'",
    )


def _parse_ip(value: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not value:
        return None
    try:
        address = ipaddress.ip_address(value.split("%", 1)[0])
    except ValueError:
        return None
    # An IPv4 client seen through a dual-stack socket arrives as ::ffff:a.b.c.d.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _secret_check(
    partner: Partner, params: Mapping[str, Any], headers: Mapping[str, str], query_string: bytes, body: bytes
) -> PostbackRejection | None:
    secret = partner.postback_secret
    expected = secret.encode()
    signature = headers.get(SIGNATURE_HEADER)
    token = headers.get(TOKEN_HEADER) or _last(params.get(TOKEN_PARAM))
    if signature:
        wanted = postback_signature(secret=secret, query_string=query_string, body=body)
        if hmac.compare_digest(signature.strip().lower().encode("utf-8", "surrogatepass"), wanted.encode()):
            return None
    if token is not None and hmac.compare_digest(str(token).encode("utf-8", "surrogatepass"), expected):
        return None
    if signature is None and token is None:
        return PostbackRejection(
            reason="token_missing",
            message=f"Partner '{partner.partner_code}' requires a '{TOKEN_PARAM}' parameter, an {TOKEN_HEADER} header "
            f"or an {SIGNATURE_HEADER} header",
        )
    return PostbackRejection(reason="token_invalid", message="The postback token or signature is not valid")


def _last(value: Any) -> Any:
    if isinstance(value, list):
        return value[-1] if value else None
    return value
