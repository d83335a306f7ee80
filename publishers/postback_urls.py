"""A publisher's postback URL template: its macros, their validation and their rendering."""

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlsplit

# Every macro a template may use, with what it is replaced by.
MACROS = {
    "conversion_id": "the network's conversion id",
    "click_id": "the click id",
    "sub_id": "our sub_id",
    "media_id": "our media_id",
    "offer_id": "the offer id",
    "offer_name": "the offer name",
    "status": "pending, approved, rejected or paid",
    "event": "what fired this postback: recorded, approved, rejected, paid, pending or amount",
    "payout": "the publisher's payout (its payout rule applied, 2 decimals)",
    "sale_amount": "the sale amount in USD",
    "earning": "our earning in USD",
    "currency": "ISO 4217 code of the local amounts",
    "sale_amount_local": "the sale amount in the local currency",
    "conversion_datetime": "when the conversion happened (ISO 8601, UTC)",
    "partner_code": "the network's code",
    "publisher_code": "the publisher's code",
    "idempotency_key": "the delivery's idempotency key (the same on every retry)",
}
MACRO_PATTERN = re.compile(r"\{([^{}]*)\}")
MAX_URL_LENGTH = 2000


class TemplateError(ValueError):
    """A template that cannot be used, saying why."""


def template_macros(template: str) -> list[str]:
    """The macros `template` uses, in order; TemplateError for an unknown or malformed one."""
    found = MACRO_PATTERN.findall(template)
    unknown = sorted({name for name in found if name not in MACROS})
    if unknown:
        raise TemplateError(
            f"unknown macro(s) {', '.join('{' + name + '}' for name in unknown)}; "
            f"known: {', '.join('{' + name + '}' for name in MACROS)}"
        )
    leftover = MACRO_PATTERN.sub("", template)
    if "{" in leftover or "}" in leftover:
        raise TemplateError("a '{' or '}' that does not belong to a macro")
    return found


def template_validate(template: str) -> None:
    """TemplateError unless `template` is an http(s) URL with known macros only."""
    if not template or not template.strip():
        raise TemplateError("a postback URL template is required")
    if len(template) > MAX_URL_LENGTH:
        raise TemplateError(f"longer than {MAX_URL_LENGTH} characters")
    if any(ch.isspace() for ch in template):
        raise TemplateError("a URL contains no spaces or line breaks")
    template_macros(template)
    parts = urlsplit(MACRO_PATTERN.sub("x", template))
    if parts.scheme not in ("http", "https"):
        raise TemplateError(f"only http:// and https:// URLs are sent, not {parts.scheme or 'a URL without scheme'}")
    if not parts.hostname:
        raise TemplateError("the URL has no host name")
    if "@" in parts.netloc:
        # Never sent (publishers.outbound refuses them): every send would fail.
        raise TemplateError(
            "a user name or password in the URL (user:password@host) is not supported: postbacks are sent "
            "without credentials. Remove them; to let the publisher check that a postback is ours, set a "
            "signing secret (X-Postback-Signature)"
        )
    if "{" in (urlsplit(template).netloc or ""):
        raise TemplateError("macros may not be used in the host name")


def template_parts(template: str) -> tuple[str, ...]:
    """The template split once: literal text at even indexes, macro names at odd ones."""
    return tuple(MACRO_PATTERN.split(template))


def template_render(template: str, values: Mapping[str, Any], *, parts: tuple[str, ...] | None = None) -> str:
    """`template` with every macro replaced by its URL-encoded value (missing: empty);
    `parts`: the template already split by template_parts."""
    parts = parts if parts is not None else template_parts(template)
    rendered = []
    for index, part in enumerate(parts):
        if index % 2 == 0:
            rendered.append(part)
        else:
            value = values.get(part)
            if value:
                rendered.append(quote(str(value), safe=""))
    return "".join(rendered)
