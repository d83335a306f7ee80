"""Every masker: what a credential or a partner's secret becomes before it is stored or logged.

A postback's `token` parameter and the partner's secret (in what a postback stores),
credential headers (stored request headers, gunicorn's access lines), `token=` values in
logged URLs and text, and database passwords in URLs shown to people: all masked here,
with one MASK.
"""

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote_plus, urlsplit, urlunsplit

SENSITIVE_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "cookie", "set-cookie", "x-postback-token", "x-postback-signature"}
)


SENSITIVE_HEADER_WORDS = ("secret", "token", "password", "api-key", "apikey", "signature")


MASK = "****"


def headers_for_storage(headers: Mapping[str, str]) -> dict[str, str]:
    """Request headers with credentials and secrets masked."""
    stored = {}
    for name, value in headers.items():
        lowered = name.lower()
        if lowered in SENSITIVE_HEADERS or any(word in lowered for word in SENSITIVE_HEADER_WORDS):
            value = MASK
        stored[name] = value
    return stored


SECRET_PARAMS = frozenset({"token"})


def secret_masked(value: Any, *, secret: str, names: frozenset[str] = SECRET_PARAMS) -> Any:
    """`value` (params or headers, nested) with the parameters in `names` (the `token`
    parameter, and the partner's own token parameter) masked and, when the partner has a
    secret, every occurrence of it replaced: it must never be stored or logged."""
    if isinstance(value, str):
        return value.replace(secret, MASK) if secret and secret in value else value
    if type(value) is dict:
        # The flat dict of text every postback has, without a call per key and value.
        masked = {}
        for key, item in value.items():
            if not isinstance(key, str):
                masked[secret_masked(key, secret=secret, names=names)] = secret_masked(item, secret=secret, names=names)
                continue
            hidden = key.lower() in names
            if secret and secret in key:
                key = key.replace(secret, MASK)
            if hidden:
                masked[key] = MASK
            elif type(item) is str:
                masked[key] = item.replace(secret, MASK) if secret and secret in item else item
            else:
                masked[key] = secret_masked(item, secret=secret, names=names)
        return masked
    if isinstance(value, dict):
        return {
            secret_masked(key, secret=secret, names=names): MASK
            if isinstance(key, str) and key.lower() in names
            else secret_masked(item, secret=secret, names=names)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [secret_masked(item, secret=secret, names=names) for item in value]
    return value


# --- Secrets in logged text -------------------------------------------------------
# Where a query parameter's name starts and ends, in a URL or in free text.
_NAME_START = frozenset("?&; \t\r\n\"'(,")


_NAME_END = "=&;?# \t\r\n\"'"


_VALUE_END = re.compile(r"[&;# \t\r\n\"']")


_QUERY_SEPARATORS = re.compile(r"([&;])")


# A credential header written as `Name: value` or `'Name': 'value'`.
_CREDENTIAL_HEADER = re.compile(
    r"(\b(?:" + "|".join(re.escape(name) for name in sorted(SENSITIVE_HEADERS)) + r")\b[\"']?\s*[:=]\s*[\"']?)"
    r"([^\"'\r\n,}]+)",
    re.IGNORECASE,
)


# A line that mentions none of these (lower-cased) has no credential header to mask.
_HEADER_WORDS = ("authoriz", "signatur", "cookie", "postback-token")


def _secret_param(name: str) -> bool:
    """Whether a query parameter name (as sent, maybe percent-encoded) is a secret's: `token`,
    or any name ending in it (a partner's own token parameter, e.g. `ts_token`, must)."""
    if "%" in name or "+" in name:
        name = unquote_plus(name)
    lowered = name.lower()
    return lowered in SECRET_PARAMS or lowered.endswith("token")


def query_masked(query: str) -> str:
    """A query string with the value of each `token` parameter replaced by ****."""
    if "=" not in query or ("oken" not in query.lower() and "%" not in query):
        return query
    pieces = _QUERY_SEPARATORS.split(query)  # names and values, with the separators between
    for index in range(0, len(pieces), 2):
        name, _, value = pieces[index].partition("=")
        if value and _secret_param(name):
            pieces[index] = f"{name}={MASK}"
    return "".join(pieces)


def url_masked(url: str) -> str:
    """`url` (a path with its query string) with each `token` parameter's value replaced by ****."""
    path, question, query = url.partition("?")
    return f"{path}?{query_masked(query)}" if question else url


def log_text_masked(text: str) -> str:
    """A log line with `token=` values in the URLs it mentions, and the values of credential
    headers (Authorization, X-Postback-Token, X-Postback-Signature, Cookie...), masked.

    Cheap when there is nothing to mask, as in almost every line. (A parameter name that
    spells `token` with a percent-escape before its `oken` is masked only where URLs are
    logged, by url_masked.)
    """
    lowered = text.lower()
    if "oken" in lowered:
        text = _token_values_masked(text, lowered)
    if any(word in lowered for word in _HEADER_WORDS):
        text = _CREDENTIAL_HEADER.sub(lambda match: match.group(1) + MASK, text)
    return text


def _token_values_masked(text: str, lowered: str) -> str:
    """`text` with the value of every `...oken=value` pair whose name is `token` masked."""
    pieces = []
    done = 0  # text[:done] is in pieces
    found = lowered.find("oken")
    while found >= 0:
        start = found
        while start > done and text[start - 1] not in _NAME_START:
            start -= 1
        end = found + 4
        while end < len(text) and text[end] not in _NAME_END:
            end += 1
        if end < len(text) and text[end] == "=" and _secret_param(text[start:end]):
            value_end = _VALUE_END.search(text, end + 1)
            value_end = value_end.start() if value_end else len(text)
            if value_end > end + 1:
                pieces += (text[done : end + 1], MASK)
                done = end = value_end
        found = lowered.find("oken", max(end, found + 4))
    return "".join(pieces) + text[done:] if pieces else text


def access_atoms_masked(atoms: Mapping[str, Any]) -> dict[str, Any]:
    """gunicorn's access log atoms with credential headers (request `{name}i`, response
    `{name}o`, environ `{http_name}e`) replaced by **** and tokens masked in every other value."""
    masked: dict[str, Any] = {}
    for key, value in atoms.items():
        if key.startswith("{") and _header_sensitive(_atom_header(key)):
            masked[key] = MASK
        elif isinstance(value, str):
            masked[key] = _atom_masked(key, value)
        else:
            masked[key] = value
    return masked


def _atom_masked(key: str, value: str) -> str:
    if key in ("q", "{query_string}e"):
        return query_masked(value)
    if key == "r":  # METHOD TARGET PROTOCOL
        method, space, rest = value.partition(" ")
        target, space2, protocol = rest.rpartition(" ")
        return f"{method}{space}{url_masked(target)}{space2}{protocol}" if space2 else log_text_masked(value)
    if "?" in value and "://" in value[:12] or value.startswith("/"):  # a URL: the referer, RAW_URI
        return url_masked(value)
    return log_text_masked(value)


def _header_sensitive(name: str) -> bool:
    """The rule request_headers are stored by: credentials, and names that say token, secret..."""
    return name in SENSITIVE_HEADERS or any(word in name for word in SENSITIVE_HEADER_WORDS)


def _atom_header(key: str) -> str:
    """The header an access log atom (`{x-postback-token}i`, `{http_x_postback_token}e`) is about."""
    name = key[1:-2].lower()
    if key.endswith("}e"):
        name = name.removeprefix("http_").replace("_", "-")
    return name


# --- Passwords in database URLs ------------------------------------------------------
def url_mask_password(url: str) -> str:
    """Return `url` with its password replaced by asterisks (for display and logs)."""
    if not url:
        return url
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:{MASK}@{host}"))
