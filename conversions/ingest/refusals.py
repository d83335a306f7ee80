"""Refusals: postbacks turned away before anything is stored, and their audit.

A Refusal is raised by the parse and guard stages and answered by the pipeline; its
`reason` decides the HTTP status (REASONS) and is what the audit counts per partner,
partner-local day and reason in the partner's own database.
"""

import datetime
import logging
from dataclasses import dataclass, field

from django.utils import timezone

from conversions.ingest.counters import daily_counter_increment
from conversions.models import DailyCounter
from conversions.outcomes import Outcome
from partners.databases import PartnerDatabaseUnavailable, partner_database
from partners.models import Partner

logger = logging.getLogger("conversions.security")

REJECTED_PREFIX = "rejected:"

# reason -> HTTP status; the reason is what the audit counts and the response names.
REASONS = {
    "body_too_large": 413,
    "too_many_parameters": 400,
    "parameter_name_too_long": 400,
    "parameter_value_too_long": 400,
    "invalid_data": 400,
    "ip_not_allowed": 403,
    "token_missing": 403,
    "token_invalid": 403,
    "signature_expired": 403,
    "quota_exceeded": 429,
}


@dataclass(frozen=True)
class Refusal:
    """A postback refused before (or instead of) being stored as a conversion."""

    reason: str
    message: str
    errors: dict[str, str] = field(default_factory=dict)
    retry_after: int | None = None

    @property
    def http_status(self) -> int:
        return REASONS[self.reason]

    @property
    def outcome(self) -> Outcome:
        return Outcome.for_status(self.http_status)


class Refused(Exception):
    """Raised by the parse and guard stages with the Refusal the pipeline answers."""

    def __init__(self, refusal: Refusal):
        super().__init__(refusal.message)
        self.refusal = refusal


@dataclass(frozen=True)
class RefusalCount:
    day: datetime.date
    reason: str
    http_status: int
    count: int
    last_at: datetime.datetime


def refusal_record(*, partner: Partner, reason: str, now: datetime.datetime | None = None) -> None:
    """Count one refused postback for the partner's local day. Never raises: the audit
    must not turn a 4xx into a 5xx when the partner database is away."""
    now = now or timezone.now()
    try:
        with partner_database(partner) as alias:
            daily_counter_increment(
                alias=alias,
                partner_id=partner.pk,
                day=partner.local_now(now).date(),
                name=REJECTED_PREFIX + reason,
                now=now,
            )
    except PartnerDatabaseUnavailable as exc:
        logger.error("cannot count refused postback partner=%s reason=%s: %s", partner.partner_code, reason, exc)


def refusal_counts(*, partner: Partner, days: int = 30) -> list[RefusalCount]:
    """Refused postbacks of the last `days` local days, newest day first (raises
    PartnerDatabaseUnavailable when the partner's database cannot be read)."""
    since = partner.local_now().date() - datetime.timedelta(days=days - 1)
    with partner_database(partner) as alias:
        rows = list(
            DailyCounter.objects.using(alias)
            .filter(partner_id=partner.pk, day__gte=since, name__startswith=REJECTED_PREFIX)
            .order_by("-day", "name")
        )
    return [
        RefusalCount(
            day=row.day,
            reason=(reason := row.name.removeprefix(REJECTED_PREFIX)),
            http_status=REASONS.get(reason, 0),
            count=row.count,
            last_at=row.last_at,
        )
        for row in rows
    ]
