"""Incidents with a lifecycle: opened when a rule fires, updated while it lasts, resolved
when it clears; one notification at open and one at resolve, never a storm.

`incidents_apply` takes what fired for a partner (health/rules.py) and its open incidents:
a new finding opens an incident (one open per partner, rule and subject: a unique index,
so two workers checking at once open it once) with its notifications queued in the same
transaction; a finding that is still there updates its evidence; an open incident whose
rule has not fired for its `resolve_after_minutes` resolves (a compare-and-set, so it is
resolved — and told — once).
"""

import datetime
import logging
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from health.models import Incident, IncidentEvent
from health.notify import notifications_queue
from health.rules import Finding
from partners.models import Partner

logger = logging.getLogger("health")


def incidents_apply(
    *,
    partner: Partner,
    found: list[Finding],
    open_incidents: list[Incident],
    settings: dict[str, dict[str, Any]],
    now: datetime.datetime | None = None,
) -> dict[str, int]:
    """Open, update and resolve the partner's incidents for what fired now; counts by what happened."""
    now = now or timezone.now()
    counts = {"opened": 0, "updated": 0, "resolved": 0}
    open_by_key = {(incident.rule, incident.subject): incident for incident in open_incidents}
    firing = {(finding.rule, finding.subject): finding for finding in found}
    for key, finding in firing.items():
        incident = open_by_key.get(key)
        if incident is None:
            counts["opened"] += incident_open(partner=partner, finding=finding, now=now)
        else:
            incident_update(incident=incident, finding=finding, now=now)
            counts["updated"] += 1
    for key, incident in open_by_key.items():
        if key in firing:
            continue
        quiet_for = settings.get(incident.rule, {}).get("resolve_after_minutes", 0)
        if now - incident.updated_at < datetime.timedelta(minutes=quiet_for):
            continue  # cleared only lately: a spike that comes back stays one incident
        counts["resolved"] += incident_resolve(incident=incident, now=now)
    return counts


def incident_open(*, partner: Partner, finding: Finding, now: datetime.datetime) -> bool:
    """Open an incident and queue its notifications; False when another worker opened it first."""
    try:
        with transaction.atomic():
            incident = Incident.objects.create(
                partner=partner,
                rule=finding.rule,
                subject=finding.subject,
                summary=finding.summary[:300],
                evidence=finding.evidence,
                opened_at=now,
                updated_at=now,
            )
            IncidentEvent.objects.create(
                incident=incident, at=now, kind="opened", text=finding.summary, evidence=finding.evidence
            )
            notifications_queue(incident=incident, event="open")
    except IntegrityError:
        return False  # open already (another worker, the same check)
    logger.warning(
        "health partner=%s incident=%s %s opened: %s", partner.partner_code, incident.pk, finding.rule, finding.summary
    )
    return True


def incident_update(*, incident: Incident, finding: Finding, now: datetime.datetime) -> None:
    """The rule still fires: the latest evidence, and when it was last seen."""
    changed = incident.summary != finding.summary[:300]
    Incident.objects.filter(pk=incident.pk, state=Incident.OPEN).update(
        summary=finding.summary[:300], evidence=finding.evidence, updated_at=now
    )
    if changed:
        IncidentEvent.objects.create(
            incident=incident, at=now, kind="updated", text=finding.summary, evidence=finding.evidence
        )


def incident_resolve(*, incident: Incident, now: datetime.datetime, why: str = "cleared") -> bool:
    """Resolve an open incident and queue its notifications; False when it was resolved already."""
    with transaction.atomic():
        resolved = Incident.objects.filter(pk=incident.pk, state=Incident.OPEN).update(
            state=Incident.RESOLVED, resolved_at=now, updated_at=now
        )
        if not resolved:
            return False
        incident.state, incident.resolved_at = Incident.RESOLVED, now
        IncidentEvent.objects.create(incident=incident, at=now, kind="resolved", text=why)
        notifications_queue(incident=incident, event="resolved")
    logger.warning("health partner=%s incident=%s %s resolved", incident.partner_id, incident.pk, incident.rule)
    return True
