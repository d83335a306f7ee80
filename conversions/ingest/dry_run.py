"""The admin's test postback: a pasted postback parsed, mapped and decided exactly as a
real one would be (parse.py, decide.py), storing nothing."""

import json
from dataclasses import dataclass
from typing import Any

from django.db import DatabaseError

from conversions.ingest.decide import Decision, decide, partner_postback_map
from conversions.ingest.parse import postback_from_payload
from conversions.models import ORIGINAL, PartnerConversion
from conversions.outcomes import Outcome
from partners.databases import PartnerDatabaseUnavailable, partner_database
from partners.mapping import CANONICAL_FIELDS
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
    decision: Decision | None = None

    @property
    def outcome(self) -> Outcome:
        """What the postback would get: REJECTED, or the decision against the stored original."""
        if self.errors:
            return Outcome.REJECTED
        return self.decision.outcome if self.decision is not None else Outcome.SUCCESS

    @property
    def changes(self) -> dict[str, list[Any]]:
        return self.decision.changes if self.decision is not None else {}

    @property
    def params_json(self) -> str:
        return json.dumps(self.params, ensure_ascii=False, indent=2, default=str)


def postback_dry_run(*, partner: Partner, payload: str) -> DryRun:
    """What a postback carrying `payload` (query string, whole URL or JSON body) would store."""
    postback = postback_from_payload(payload)
    mapped = partner_postback_map(partner=partner, params=postback.params)
    errors = {**postback.errors, **mapped.errors}
    fields = [
        DryRunField(name=name, source=mapped.sources.get(name), value=mapped.values.get(name), error=errors.get(name))
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
        params=postback.params,
        fields=fields,
        ignored=mapped.ignored,
        errors=errors,
        original_exists=original_exists,
        decision=decision,
    )
