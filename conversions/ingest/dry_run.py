"""The admin's test postback: a postback parsed, guarded, mapped and decided exactly as a
real one would be (parse.py, guards.py without the quota, decide.py), storing nothing."""

import json
import re
from dataclasses import dataclass
from typing import Any

from django.db import DatabaseError
from django.http import HttpRequest

from conversions.ingest.decide import Decision, decide, partner_postback_map
from conversions.ingest.guards import postback_access_guard
from conversions.ingest.parse import postback_from_payload, postback_parse
from conversions.ingest.refusals import Refusal, Refused
from conversions.models import ORIGINAL, PartnerConversion
from conversions.outcomes import Outcome
from infra.databases import PartnerDatabaseUnavailable, partner_database
from partners.mapping import CANONICAL_FIELDS
from partners.models import Partner

# `{aff_sub}`: a macro of the postback URL template that the partner would have filled.
MACRO = re.compile(r"\{[A-Za-z0-9_.:-]+\}")


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
    decision: Decision | None = None
    # What the guards (limits, secret, allowlist) answer the network; nothing is mapped then.
    refusal: Refusal | None = None

    @property
    def outcome(self) -> Outcome:
        """What the postback would get: REJECTED, or the decision against the stored original."""
        if self.refusal is not None:
            return self.refusal.outcome
        if self.errors:
            return Outcome.INVALID
        return self.decision.outcome if self.decision is not None else Outcome.SUCCESS

    @property
    def changes(self) -> dict[str, list[Any]]:
        return self.decision.changes if self.decision is not None else {}

    @property
    def error_lines(self) -> list[str]:
        """Each error once, naming our field and, when it differs, the partner's parameter."""
        sources = {field.name: field.source for field in self.fields}
        lines = []
        for name, message in self.errors.items():
            source = sources.get(name)
            prefix = f"{source or name}: "
            message = message.removeprefix(prefix)
            shown = f"{name} (from {source})" if source and source != name else name
            lines.append(f"{shown}: {message}")
        return lines

    @property
    def unfilled_macros(self) -> list[str]:
        """`param={macro}` for each parameter still holding a macro of a URL template."""
        return [
            f"{name}={value}" for name, value in self.params.items() if isinstance(value, str) and MACRO.search(value)
        ]

    @property
    def params_json(self) -> str:
        return json.dumps(self.params, ensure_ascii=False, indent=2, default=str)


def postback_dry_run(*, partner: Partner, payload: str = "", request: HttpRequest | None = None) -> DryRun:
    """What a postback carrying `payload` (query string, whole URL or JSON body) would store;
    or, given the `request` its network would send (TestPostbackForm.postback_request()),
    what that request would get: the guards' limits and access checks first, as a real
    postback (the daily quota is neither checked nor used)."""
    if request is None:
        postback = postback_from_payload(payload)
        params = postback.params
    else:
        try:
            postback = postback_parse(request)
        except Refused as refused:
            return DryRun(params={}, fields=[], ignored=[], errors={}, refusal=refused.refusal)
        params = postback.masked_params(secret=partner.postback_secret, token_param=partner.token_param)
        refusal = postback_access_guard(partner=partner, postback=postback)
        if refusal is not None:
            return DryRun(params=params, fields=[], ignored=[], errors={}, refusal=refusal)
    mapped = partner_postback_map(partner=partner, params=params)
    errors = {**postback.errors, **mapped.errors}
    fields = [
        DryRunField(
            name=name,
            source=mapped.sources.get(name),
            value=mapped.values.get(name),
            # The "from parameter" column names the source: the message need not repeat it.
            error=errors[name].removeprefix(f"{mapped.sources.get(name) or name}: ") if name in errors else None,
        )
        for name in CANONICAL_FIELDS
    ]
    original_exists, decision = None, None
    if not errors:
        try:
            with partner_database(partner) as alias:
                original = (
                    PartnerConversion.objects.using(alias)
                    .filter(ORIGINAL, partner_id=partner.pk, conversion_id=mapped.values["conversion_id"])
                    .first()
                )
        except (PartnerDatabaseUnavailable, DatabaseError):
            pass
        else:
            original_exists = original is not None
            decision = decide(
                incoming=mapped.values, original=original, transitions=partner.status_transitions, digest=None
            )
    return DryRun(
        params=params,
        fields=fields,
        ignored=mapped.ignored,
        errors=errors,
        original_exists=original_exists,
        decision=decision,
    )
