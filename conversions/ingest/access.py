"""Who may post for a partner: its IP allowlist and its secret (token or HMAC signature).

Pure checks on the request and the cached Partner: no database work, constant-time
comparisons, allowlists parsed once per loaded partner configuration.
"""

import hashlib
import hmac
import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from django.conf import settings

from conversions.ingest.refusals import Refusal
from infra.addresses import address_allowed
from partners.mapping import TOKEN_PARAM  # the secret's parameter unless the partner names another
from partners.models import Partner

if TYPE_CHECKING:
    from conversions.ingest.parse import Postback

logger = logging.getLogger("conversions.security")

TOKEN_HEADER = "X-Postback-Token"  # noqa: S105 (a header name)
SIGNATURE_HEADER = "X-Postback-Signature"
SIGNATURE_PREFIX = "sha256="
# Unix seconds, signed with the request: a signed request replayed outside the window is refused.
TIMESTAMP_HEADER = "X-Postback-Timestamp"


def postback_access_check(*, partner: Partner, postback: "Postback") -> Refusal | None:
    """None when the postback's sender may post for `partner`, else why not (a 403)."""
    refusal = _allowlist_check(partner, postback.client_ip)
    if refusal is None and partner.postback_secret:
        refusal = _secret_check(partner, postback.params, postback.headers, postback.query_string, postback.body)
    return refusal


def postback_signature(*, secret: str, query_string: bytes, body: bytes, timestamp: str | None = None) -> str:
    """The `X-Postback-Signature` value for a request: HMAC-SHA256 of what it sends.

    The raw query string when there is no body, the raw body when there is no query
    string, and `<query string>\\n<body>` when there are both (a query string never
    contains a raw newline, so the two parts cannot be shifted into each other). With an
    `X-Postback-Timestamp`, its value and a dot come first (`<timestamp>.<message>`, as
    Stripe signs), so the time cannot be changed without the secret.
    """
    if query_string and body:
        message = query_string + b"\n" + body
    else:
        message = body or query_string
    if timestamp is not None:
        message = timestamp.encode("utf-8", "surrogatepass") + b"." + message
    return SIGNATURE_PREFIX + hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def _allowlist_check(partner: Partner, client_ip: str | None) -> Refusal | None:
    if not partner.allowed_ips.strip():
        return None
    try:
        networks = partner.allowed_networks
    except ValueError:
        # A list that cannot be read must not fall open to "anyone".
        logger.error("partner=%s has an unreadable IP allowlist; refusing every client", partner.partner_code)
        networks = ()
    if address_allowed(client_ip, networks):
        return None
    return Refusal(
        reason="ip_not_allowed",
        message=f"Client address {client_ip or 'unknown'} is not allowed to post for partner '{partner.partner_code}'",
    )


def _secret_check(
    partner: Partner, params: Mapping[str, Any], headers: Mapping[str, str], query_string: bytes, body: bytes
) -> Refusal | None:
    secret = partner.postback_secret
    expected = secret.encode()
    signature = headers.get(SIGNATURE_HEADER)
    token = headers.get(TOKEN_HEADER) or _last(params.get(partner.token_param or TOKEN_PARAM))
    if signature:
        timestamp = headers.get(TIMESTAMP_HEADER)
        wanted = postback_signature(secret=secret, query_string=query_string, body=body, timestamp=timestamp)
        if hmac.compare_digest(signature.strip().lower().encode("utf-8", "surrogatepass"), wanted.encode()):
            return None if timestamp is None else _timestamp_check(timestamp)
    if token is not None and hmac.compare_digest(str(token).encode("utf-8", "surrogatepass"), expected):
        return None
    if signature is None and token is None:
        return Refusal(
            reason="token_missing",
            message=f"Partner '{partner.partner_code}' requires a '{partner.token_param or TOKEN_PARAM}' parameter, "
            f"an {TOKEN_HEADER} header "
            f"or an {SIGNATURE_HEADER} header",
        )
    return Refusal(reason="token_invalid", message="The postback token or signature is not valid")


def _timestamp_check(timestamp: str) -> Refusal | None:
    window = settings.POSTBACK_SIGNATURE_TOLERANCE_SECONDS
    try:
        age = time.time() - int(timestamp.strip())
    except ValueError:
        return Refusal(
            reason="signature_expired", message=f"{TIMESTAMP_HEADER} must be Unix seconds, not {timestamp[:40]!r}"
        )
    if abs(age) > window:
        return Refusal(
            reason="signature_expired",
            message=f"The signed request is {int(abs(age))} s {'old' if age > 0 else 'in the future'}; "
            f"the window is {window} s ({TIMESTAMP_HEADER})",
        )
    return None


def _last(value: Any) -> Any:
    if isinstance(value, list):
        return value[-1] if value else None
    return value
