"""The "test postback" of the partner admin: a pasted postback mapped exactly as a real
one would be (same request parsing, same mapping and coercion), storing nothing."""

import io
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from django.core.handlers.wsgi import WSGIRequest
from django.db import DatabaseError

from conversions.models import PartnerConversion
from conversions.services import conversion_changes, partner_timezone
from conversions.views import postback_params
from partners.lifecycle import transition_permitted
from partners.mapping import CANONICAL_FIELDS, postback_map
from partners.models import Partner


@dataclass(frozen=True)
class DryRunField:
    name: str
    source: str | None
    value: Any
    error: str | None


@dataclass(frozen=True)
class DryRun:
    params: dict[str, Any]
    fields: list[DryRunField]
    ignored: list[str]
    errors: dict[str, str]
    # None when the partner's database could not be asked.
    original_exists: bool | None = None
    # Against the stored original: "duplicate", "updated" or "stale", with what would change.
    repeat: str | None = None
    changes: dict[str, list[Any]] | None = None

    @property
    def outcome(self) -> str:
        if self.errors:
            return "error"
        if self.original_exists:
            return "updated" if self.repeat == "updated" else "duplicate"
        return "success"

    @property
    def params_json(self) -> str:
        return json.dumps(self.params, ensure_ascii=False, indent=2, default=str)


def postback_dry_run(*, partner: Partner, payload: str) -> DryRun:
    """What a postback carrying `payload` (query string, whole URL or JSON body) would store."""
    text = payload.strip()
    if text.startswith(("{", "[")):
        environ = _environ(method="POST", query="", body=text.encode(), content_type="application/json")
    else:
        query = urlsplit(text).query if "?" in text else text
        environ = _environ(method="GET", query=query, body=b"", content_type="")
    params, body_errors = postback_params(WSGIRequest(environ))
    mapped = postback_map(
        mapping=partner.parameter_mapping,
        params=params,
        tz=partner_timezone(partner.timezone),
        status_mapping=partner.status_mapping,
    )
    errors = {**body_errors, **mapped.errors}
    fields = [
        DryRunField(
            name=name,
            source=mapped.sources.get(name),
            value=mapped.values.get(name),
            error=mapped.errors.get(name),
        )
        for name in CANONICAL_FIELDS
    ]
    original_exists, repeat, changes = None, None, None
    if not errors:
        try:
            original = _original(partner=partner, conversion_id=mapped.values["conversion_id"])
        except DatabaseError:
            original = False
        if original is not False:
            original_exists = original is not None
        if original:
            changes = conversion_changes(original=original, incoming=mapped.values)
            new_status = mapped.values.get("status") or original.status
            if not changes:
                repeat = "duplicate"
            elif transition_permitted(original.status, new_status, partner.status_transitions):
                repeat = "updated"
            else:
                repeat = "stale"
    return DryRun(
        params=params,
        fields=fields,
        ignored=mapped.ignored,
        errors=errors,
        original_exists=original_exists,
        repeat=repeat,
        changes=changes,
    )


def _original(*, partner: Partner, conversion_id: str) -> PartnerConversion | None:
    alias = partner.database_alias
    return (
        PartnerConversion.objects.using(alias)
        .filter(partner_id=partner.pk, conversion_id=conversion_id, is_duplicate=False, processing_error__isnull=True)
        .first()
    )


def _environ(*, method: str, query: str, body: bytes, content_type: str) -> dict[str, Any]:
    return {
        "REQUEST_METHOD": method,
        "QUERY_STRING": query,
        "CONTENT_TYPE": content_type,
        "CONTENT_LENGTH": str(len(body)),
        "PATH_INFO": "/partner/test-postback",
        "SCRIPT_NAME": "",
        "SERVER_NAME": "test-postback",
        "SERVER_PORT": "80",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body),
    }
