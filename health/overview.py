"""The health page's rows: every partner a user may see, its traffic light and the checker's
last numbers (PartnerHealth.signals) in words, its open incidents, and its last 48 hours
drawn as a small SVG.

Two queries whatever the number of partners (the partners with their PartnerHealth, the open
incidents); a signal that is missing or not of the expected type reads as unknown.
"""

import datetime
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString

from health.models import Incident, PartnerHealth
from partners.selectors import partners_visible_to

# Red first: the page is read to find what is wrong. Partners never checked come last.
LIGHT_ORDER = {PartnerHealth.RED: 0, PartnerHealth.AMBER: 1, PartnerHealth.GREEN: 2}
NOT_CHECKED = "not checked yet"
CHART_HOURS = 48
CHART_BAR_WIDTH = 3
CHART_HEIGHT = 24
# The checker is late when its last check is older than this many of its intervals.
CHECKER_LATE_INTERVALS = 3
HEALTH_FIELDS = ("light", "last_received_at", "signals", "checked_at")


@dataclass
class IncidentLink:
    url: str
    label: str
    summary: str


@dataclass
class HealthRow:
    partner_code: str
    partner_name: str
    partner_url: str
    light: str  # green, amber, red, or "" when never checked
    checked_at: datetime.datetime | None = None
    last_received: str = NOT_CHECKED
    last_received_at: datetime.datetime | None = None
    last_hour: str = ""
    today: str = ""
    invalid: str = ""
    refused: str = ""
    reconciliation: str = ""
    problems: list[str] = field(default_factory=list)
    incidents: list[IncidentLink] = field(default_factory=list)
    chart: SafeString | str = ""

    @property
    def light_label(self) -> str:
        return self.light or NOT_CHECKED


@dataclass
class HealthOverview:
    rows: list[HealthRow]
    checked_at: datetime.datetime | None
    checker_late: bool
    check_seconds: float
    counts: dict[str, int]


def health_overview(*, user, now: datetime.datetime | None = None) -> HealthOverview:
    """The health page of `user`: one row per active partner they may see, red first."""
    now = now or timezone.now()
    partners = list(
        partners_visible_to(user)
        .filter(is_active=True)
        .select_related("health")
        .only("pk", "partner_code", "partner_name", *(f"health__{name}" for name in HEALTH_FIELDS))
    )
    open_incidents: dict[int, list[IncidentLink]] = defaultdict(list)
    if partners:
        incidents = (
            Incident.objects.filter(state=Incident.OPEN, partner_id__in=[partner.pk for partner in partners])
            .order_by("opened_at", "id")
            .values_list("pk", "partner_id", "rule", "subject", "summary")
        )
        rule_names = dict(Incident._meta.get_field("rule").choices)
        # The admin's own URL layout (<changelist>/<pk>/change/): one reverse() for all the rows.
        incidents_url = reverse("admin:health_incident_changelist")
        for pk, partner_id, rule, subject, summary in incidents:
            label = rule_names.get(rule, rule) + (f": {subject}" if subject else "")
            url = f"{incidents_url}{pk}/change/"
            open_incidents[partner_id].append(IncidentLink(url=url, label=label, summary=summary))
    partners_url = reverse("admin:partners_partner_changelist")
    rows = [_row(partner, open_incidents.get(partner.pk, []), now, partners_url) for partner in partners]
    rows.sort(key=lambda row: (LIGHT_ORDER.get(row.light, 3), row.partner_name.casefold(), row.partner_code))
    checked = [row.checked_at for row in rows if row.checked_at is not None]
    checked_at = max(checked) if checked else None
    check_seconds = float(settings.HEALTH_CHECK_SECONDS)
    late_after = datetime.timedelta(seconds=check_seconds * CHECKER_LATE_INTERVALS + 60)
    counts = {light: 0 for light in (*LIGHT_ORDER, "unchecked")}
    for row in rows:
        counts[row.light or "unchecked"] += 1
    return HealthOverview(
        rows=rows,
        checked_at=checked_at,
        checker_late=bool(rows) and (checked_at is None or now - checked_at > late_after),
        check_seconds=check_seconds,
        counts=counts,
    )


def _row(partner, incidents: list[IncidentLink], now: datetime.datetime, partners_url: str) -> HealthRow:
    row = HealthRow(
        partner_url=f"{partners_url}{partner.pk}/change/",
        partner_code=partner.partner_code,
        partner_name=partner.partner_name,
        light="",
        incidents=incidents,
    )
    try:
        health = partner.health
    except PartnerHealth.DoesNotExist:
        return row
    if health.checked_at is None:
        return row
    signals = health.signals if isinstance(health.signals, dict) else {}
    row.light = health.light if health.light in LIGHT_ORDER else ""
    row.checked_at = health.checked_at
    row.last_received_at = health.last_received_at or _moment(signals.get("last_received_at"))
    if row.last_received_at is not None:
        row.last_received = age_in_words((now - row.last_received_at).total_seconds())
    else:
        row.last_received = age_in_words(_number(signals.get("last_received_age_seconds")))
    row.last_hour = count_against_normal(_integer(signals.get("last_hour")), _number(signals.get("normal_hour")))
    row.today = count_against_normal(_integer(signals.get("today")), _number(signals.get("today_normal")))
    row.invalid = share_text(_number(signals.get("invalid_share")))
    refused, refused_share = _integer(signals.get("refused")), _number(signals.get("refused_share"))
    row.refused = share_text(refused_share) + (f" ({refused:,})" if refused else "")
    row.reconciliation = reconciliation_text(signals.get("reconciliation"))
    if signals.get("storage_ok") is False:
        error = signals.get("storage_error")
        row.problems.append("storage failing" + (f": {str(error)[:160]}" if error else ""))
    paused = signals.get("publishers_paused")
    if isinstance(paused, list) and paused:
        row.problems.append("publishers paused: " + ", ".join(str(code) for code in paused[:10]))
    failing = signals.get("publishers_failing")
    if isinstance(failing, dict) and failing:
        row.problems.append(
            "publishers failing: "
            + ", ".join(f"{code} ({count} failed in a row)" for code, count in list(failing.items())[:10])
        )
    row.chart = hourly_chart(signals.get("hourly_48h"))
    return row


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _integer(value: Any) -> int | None:
    number = _number(value)
    return round(number) if number is not None else None


def _moment(value: Any) -> datetime.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if timezone.is_aware(moment) else moment.replace(tzinfo=datetime.UTC)


def age_in_words(seconds: float | None) -> str:
    """How long ago, as people say it: "just now", "3 min ago", "5 h ago", "2 days ago"; None: "never"."""
    if seconds is None:
        return "never"
    minutes = int(max(seconds, 0) // 60)
    if minutes < 1:
        return "just now"
    if minutes < 60:
        return f"{minutes} min ago"
    hours = minutes // 60
    if hours < 48:
        return f"{hours} h ago"
    return f"{hours // 24} days ago"


def count_against_normal(count: int | None, normal: float | None) -> str:
    """ "1,204 / normal 1,310"; the normal is unknown until the partner has weeks of history."""
    if count is None:
        return "unknown"
    return f"{count:,} / normal " + (f"{round(normal):,}" if normal is not None else "unknown")


def share_text(share: float | None) -> str:
    """A share (0..1) as a percentage, "-" when unknown (nothing received)."""
    return f"{share * 100:.1f}%" if share is not None else "-"


def reconciliation_text(reconciliation: Any) -> str:
    """ "98.7% matched, 12 missing here, 2026-12-06" (match_rate is a share, 0..1)."""
    if not isinstance(reconciliation, dict):
        return "no run yet"
    at = _moment(reconciliation.get("at"))
    day = f", {at.date().isoformat()}" if at is not None else ""
    if reconciliation.get("failed"):
        return f"last run failed{day}"
    rate = _number(reconciliation.get("match_rate"))
    missing = _integer(reconciliation.get("missing_here")) or 0
    matched = f"{rate * 100:.1f}% matched" if rate is not None else "nothing to match"
    return f"{matched}, {missing:,} missing here{day}"


def hourly_chart(hours: Any) -> SafeString | str:
    """The last 48 hours as bars, received (grey) and invalid (red) over it, scaled to the busiest
    hour: one <path> per series, so 1,000 partners cost 2,000 elements, not 96,000."""
    if not isinstance(hours, list):
        return ""
    counts: list[tuple[str, int, int]] = []
    for entry in hours[-CHART_HOURS:]:
        # type() rather than _integer(): 48,000 entries for 1,000 partners (and bool is no count).
        if type(entry) in (list, tuple) and len(entry) >= 3:
            received, invalid = entry[1], entry[2]
            if type(received) in (int, float) and type(invalid) in (int, float):
                counts.append((str(entry[0]), max(round(received), 0), max(round(invalid), 0)))
    if not counts:
        return ""
    peak = max(received for _, received, _ in counts)
    offset = CHART_HOURS - len(counts)  # the newest hour is always at the right edge
    scale = CHART_HEIGHT / peak if peak else 0.0
    received_bars, invalid_bars = [], []
    for index, (_, received, invalid) in enumerate(counts):
        x = (offset + index) * CHART_BAR_WIDTH
        for value, bars in ((received, received_bars), (invalid, invalid_bars)):
            if value:
                height = max(round(value * scale, 1), 1.0)
                bars.append(f"M{x},{CHART_HEIGHT}v-{height}h{CHART_BAR_WIDTH - 1}v{height}z")
    total = sum(received for _, received, _ in counts)
    invalid_total = sum(invalid for _, _, invalid in counts)
    description = (
        f"Postbacks per hour, last {len(counts)} hours from {counts[0][0][:13]}: {total:,} received, "
        f"{invalid_total:,} invalid, busiest hour {peak:,}"
    )
    width = CHART_HOURS * CHART_BAR_WIDTH
    return format_html(
        '<svg class="health-chart" width="{}" height="{}" viewBox="0 0 {} {}" role="img" aria-label="{}">'
        '<title>{}</title><line x1="0" y1="{}" x2="{}" y2="{}" class="base"/>'
        '<path class="received" d="{}"/><path class="invalid" d="{}"/></svg>',
        width,
        CHART_HEIGHT,
        width,
        CHART_HEIGHT,
        description,
        description,
        CHART_HEIGHT - 0.5,
        width,
        CHART_HEIGHT - 0.5,
        "".join(received_bars),
        "".join(invalid_bars),
    )
