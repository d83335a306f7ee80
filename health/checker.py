"""The channel-health checker: every active partner's signals, rules and incidents, then
the notifications owed (`manage.py channel_health [--once]`, and a job of the background
worker every HEALTH_CHECK_SECONDS).

Several workers may check at once: partners are claimed for a check in one statement on
`PartnerHealth.checked_at`, their rows locked and those another worker is claiming
skipped (a partner checked less than half an interval ago is left alone), incidents open
once (a unique index) and resolve once (a compare-and-set), and notifications are claimed
with a lease (health/notify.py).
"""

import datetime
import logging
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from health.incidents import incidents_apply
from health.models import (
    DROP,
    SILENT,
    STORAGE_FAILING,
    HealthSettings,
    HourlyCount,
    Incident,
    PartnerHealth,
)
from health.notify import notifications_send
from health.rules import findings, rule_settings
from health.signals import activity_read, hourly_counts_read, partner_signals, paused_publishers_read
from partners.models import Partner
from reconciliation.models import ReportSource

logger = logging.getLogger("health")
RED_RULES = (SILENT, STORAGE_FAILING)


@dataclass
class CheckResult:
    partners: int = 0
    skipped: int = 0
    opened: int = 0
    updated: int = 0
    resolved: int = 0
    unreachable: list[str] = field(default_factory=list)
    seconds: float = 0.0


def channel_health_check(*, now: datetime.datetime | None = None, force: bool = False) -> CheckResult:
    """Check every active partner once (those another worker checked within half an interval
    are skipped unless `force`)."""
    started = time.monotonic()
    now = now or timezone.now()
    result = CheckResult()
    partners = list(Partner.objects.filter(is_active=True).order_by("pk"))
    if not partners:
        return result
    ids = [partner.pk for partner in partners]
    PartnerHealth.objects.bulk_create([PartnerHealth(partner_id=pk) for pk in ids], ignore_conflicts=True)
    previous = _claim(ids=ids, now=now, force=force)
    claimed = list(previous)
    result.skipped = len(ids) - len(claimed)
    partners = [partner for partner in partners if partner.pk in previous]
    if not partners:
        return result
    healths = {health.partner_id: health for health in PartnerHealth.objects.filter(partner_id__in=claimed)}
    for partner_id, checked_at in previous.items():
        healths[partner_id].checked_at = checked_at  # as it was before this check claimed it
    activities = activity_read(partners=partners, healths=healths, now=now)
    counts = hourly_counts_read(partner_ids=claimed, now=now)
    firsts = {pk: health.first_counted_at for pk, health in healths.items() if health.first_counted_at}
    overrides = dict(HealthSettings.objects.filter(partner_id__in=claimed).values_list("partner_id", "overrides"))
    sources: dict[int, list[ReportSource]] = defaultdict(list)
    for source in ReportSource.objects.filter(partner_id__in=claimed, is_active=True):
        sources[source.partner_id].append(source)
    open_incidents: dict[int, list[Incident]] = defaultdict(list)
    for incident in Incident.objects.filter(partner_id__in=claimed, state=Incident.OPEN):
        open_incidents[incident.partner_id].append(incident)

    silent_lately = set(
        Incident.objects.filter(partner_id__in=claimed, rule=SILENT)
        .filter(Q(state=Incident.OPEN) | Q(resolved_at__gte=now - datetime.timedelta(hours=1)))
        .values_list("partner_id", flat=True)
    )

    paused = paused_publishers_read()
    rolled_up: list[HourlyCount] = []
    checked_health: list[PartnerHealth] = []

    def check(partner: Partner) -> tuple[Partner, dict[str, int], bool]:
        try:
            return _check(partner)
        except Exception:  # one partner's bug must not stop the others' check
            logger.exception("health partner=%s: the check failed", partner.partner_code)
            return partner, {"opened": 0, "updated": 0, "resolved": 0}, True

    def _check(partner: Partner) -> tuple[Partner, dict[str, int], bool]:
        signals, stored = partner_signals(
            partner=partner,
            health=healths[partner.pk],
            now=now,
            counts=counts.get(partner.pk, {}),
            first_hour=firsts.get(partner.pk),
            sources=sources.get(partner.pk, []),
            paused_publishers=paused,
            activity=activities[partner.pk],
        )
        rules = rule_settings(overrides.get(partner.pk))
        found = findings(signals, rules)
        if any(f.rule == SILENT for f in found) or partner.pk in silent_lately:
            # A silence is one incident: the hour it leaves short of normal is not also a drop.
            found = [f for f in found if f.rule != DROP]
        done = incidents_apply(
            partner=partner, found=found, open_incidents=open_incidents.get(partner.pk, []), settings=rules, now=now
        )
        firing = {finding.rule for finding in found}
        light = PartnerHealth.RED if firing & set(RED_RULES) else PartnerHealth.AMBER if firing else PartnerHealth.GREEN
        buckets = stored.pop("buckets", {})
        rolled_up.extend(
            HourlyCount(partner_id=partner.pk, hour=hour, received=received, invalid=invalid)
            for hour, (received, invalid) in buckets.items()
        )
        health = healths[partner.pk]
        health.light, health.signals, health.checked_at = light, signals, now
        if buckets and health.first_counted_at is None:
            health.first_counted_at = min(buckets)
        for name, value in stored.items():
            setattr(health, name, value)
        checked_health.append(health)
        return partner, done, signals.get("storage_ok", True)

    checked = [check(partner) for partner in partners]
    # What the partners' reads found, written in a few statements, not two per partner.
    HourlyCount.objects.bulk_create(
        rolled_up,
        batch_size=2000,
        update_conflicts=True,
        unique_fields=["partner", "hour"],
        update_fields=["received", "invalid"],
    )
    PartnerHealth.objects.bulk_update(
        checked_health,
        ["light", "signals", "checked_at", "counted_through", "first_counted_at", "last_received_at", "refusals_seen"],
        batch_size=500,
    )
    for partner, done, storage_ok in checked:
        result.partners += 1
        result.opened += done["opened"]
        result.updated += done["updated"]
        result.resolved += done["resolved"]
        if not storage_ok:
            result.unreachable.append(partner.partner_code)
    result.seconds = time.monotonic() - started
    logger.info(
        "health check: %d partners in %.1fs, %d skipped; incidents opened %d, resolved %d",
        result.partners,
        result.seconds,
        result.skipped,
        result.opened,
        result.resolved,
    )
    return result


def _claim(*, ids: list[int], now: datetime.datetime, force: bool) -> dict[int, datetime.datetime | None]:
    """The partners this worker checks now (those nobody checked within half an interval,
    or all with `force`) -> when they were checked before. Rows another worker is claiming
    at the same moment are skipped (locked), so of two workers each partner goes to one."""
    rows = PartnerHealth.objects.filter(partner_id__in=ids)
    if not force:
        fresh = now - datetime.timedelta(seconds=settings.HEALTH_CHECK_SECONDS / 2)
        rows = rows.filter(Q(checked_at__isnull=True) | Q(checked_at__lt=fresh))
    with transaction.atomic():
        claimed = dict(rows.select_for_update(skip_locked=True).values_list("partner_id", "checked_at"))
        PartnerHealth.objects.filter(partner_id__in=list(claimed)).update(checked_at=now)
    return claimed


def health_tick(stopping: threading.Event) -> bool:
    """The background worker's job: check, then send what the incidents owe people."""
    channel_health_check()
    if not stopping.is_set():
        notifications_send()
    return False


def jobs_register() -> None:
    """The background worker's health job (infra/jobs.py)."""
    from infra.jobs import background_job_register

    background_job_register("health.check", every=settings.HEALTH_CHECK_SECONDS, tick=health_tick)


def result_lines(result: CheckResult, sent: dict[str, Any]) -> list[str]:
    lines = [
        f"checked {result.partners} partner(s) in {result.seconds:.1f} s ({result.skipped} checked by another worker "
        f"moments ago); incidents opened {result.opened}, still open {result.updated}, resolved {result.resolved}"
    ]
    if result.unreachable:
        lines.append(f"databases not answering: {', '.join(result.unreachable)}")
    lines.append(f"notifications: {', '.join(f'{k} {v}' for k, v in sorted(sent.items())) or 'none due'}")
    return lines
