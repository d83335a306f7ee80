"""Refused postbacks: what we answer, and the audit count per partner, day and reason."""

import datetime
import logging
from dataclasses import dataclass, field

from django.utils import timezone

from conversions.counters import daily_counter_increment
from conversions.models import DailyCounter
from conversions.services import partner_timezone
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
    "quota_exceeded": 429,
}


@dataclass(frozen=True)
class PostbackRejection:
    """A postback refused before (or instead of) being stored as a conversion."""

    reason: str
    message: str
    errors: dict[str, str] = field(default_factory=dict)
    retry_after: int | None = None

    @property
    def http_status(self) -> int:
        return REASONS[self.reason]


@dataclass(frozen=True)
class RejectionCount:
    day: datetime.date
    reason: str
    http_status: int
    count: int
    last_at: datetime.datetime


def partner_local_now(partner: Partner, now: datetime.datetime | None = None) -> datetime.datetime:
    return (now or timezone.now()).astimezone(partner_timezone(partner.timezone))


def rejection_record(*, partner: Partner, reason: str, now: datetime.datetime | None = None) -> None:
    """Count one refused postback for the partner's local day. Never raises: the audit
    must not turn a 4xx into a 5xx when the partner database is away."""
    now = now or timezone.now()
    try:
        with partner_database(partner) as alias:
            daily_counter_increment(
                alias=alias,
                partner_id=partner.pk,
                day=partner_local_now(partner, now).date(),
                name=REJECTED_PREFIX + reason,
                now=now,
            )
    except PartnerDatabaseUnavailable as exc:
        logger.error("cannot count rejected postback partner=%s reason=%s: %s", partner.partner_code, reason, exc)


def rejection_counts(*, partner: Partner, days: int = 30) -> list[RejectionCount]:
    """Refused postbacks of the last `days` local days, newest day first (raises
    PartnerDatabaseUnavailable when the partner's database cannot be read)."""
    since = partner_local_now(partner).date() - datetime.timedelta(days=days - 1)
    with partner_database(partner) as alias:
        rows = list(
            DailyCounter.objects.using(alias)
            .filter(partner_id=partner.pk, day__gte=since, name__startswith=REJECTED_PREFIX)
            .order_by("-day", "name")
        )
    counts = []
    for row in rows:
        reason = row.name.removeprefix(REJECTED_PREFIX)
        counts.append(
            RejectionCount(
                day=row.day, reason=reason, http_status=REASONS.get(reason, 0), count=row.count, last_at=row.last_at
            )
        )
    return counts
