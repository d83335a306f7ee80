"""A partner's health signals, computed from what is already stored: one selector, one place.

`partner_signals` reads the partner's own table a little at a time: the hours received
since the last check are rolled up into `HourlyCount` (in `default`), so the normal of a
partner for an hour of the week — the mean of the same hour over the last four weeks — is
read from a few hundred small rows, never from the conversions themselves. It also reads
the last postback's time, the last hour's invalid rows, the refusal counters since the last
check, the last reconciliation of each report source, and the paused publishers of the
partner's conversions. A partner database that does not answer is a signal too
(`storage_ok`).
"""

import datetime
from collections.abc import Iterable
from typing import Any

from django.db import DatabaseError
from django.db.models import Q

from conversions.cross_partner import PartnerActivity, Unreadable, partners_activity
from conversions.ingest.refusals import REASONS, REJECTED_PREFIX
from health.models import HourlyCount, PartnerHealth
from infra.databases import PartnerDatabaseUnavailable, error_first_line, partner_database
from partners.models import Partner
from publishers.models import Delivery, Publisher
from reconciliation.models import MATCHED, MISSING_HERE, MISSING_THERE, ReportSource

UTC = datetime.UTC
WEEKS = 4
HOUR = datetime.timedelta(hours=1)
WEEK = datetime.timedelta(days=7)
# A silence longer than this is weighed over its last day only (the expectation is ample by then).
SILENCE_WINDOW = datetime.timedelta(hours=24)
CHART_HOURS = 48
# A first check reads this much history into the hourly counts.
HISTORY = WEEKS * WEEK + SILENCE_WINDOW + HOUR
# Refusals worth an alert: the sender's address, token or signature refused (403), too fast (429).
REFUSAL_REASONS = frozenset(reason for reason, status in REASONS.items() if status in (403, 429))


def hour_floor(moment: datetime.datetime) -> datetime.datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def counts_needed(now: datetime.datetime) -> list[tuple[datetime.datetime, datetime.datetime]]:
    """The [start, end) ranges of hours the signals read from HourlyCount: the last two days
    (the chart), and the same day of each of the last four weeks (the normal)."""
    top = hour_floor(now) + HOUR
    ranges = [(top - CHART_HOURS * HOUR - HOUR, top)]
    for week in range(1, WEEKS + 1):
        ranges.append((top - week * WEEK - SILENCE_WINDOW - HOUR, top - week * WEEK + HOUR))
    return ranges


def hourly_counts_read(
    *, partner_ids: Iterable[int], now: datetime.datetime
) -> dict[int, dict[datetime.datetime, tuple[int, int]]]:
    """partner id -> hour -> (received, invalid), for the hours the signals need, in one query."""
    ranges = counts_needed(now)
    where = Q()
    for start, end in ranges:
        where |= Q(hour__gte=start, hour__lt=end)
    found: dict[int, dict[datetime.datetime, tuple[int, int]]] = {pk: {} for pk in partner_ids}
    rows = HourlyCount.objects.filter(where, partner_id__in=list(found)).values_list(
        "partner_id", "hour", "received", "invalid"
    )
    for partner_id, hour, received, invalid in rows.iterator(chunk_size=5000):
        found[partner_id][hour.astimezone(UTC)] = (received, invalid)
    return found


def activity_read(
    *, partners: list[Partner], healths: dict[int, PartnerHealth], now: datetime.datetime
) -> dict[int, PartnerActivity | Unreadable]:
    """Every partner's storage since the last check, read together where they share a database."""
    since = min(hour_floor(healths[p.pk].counted_through or now - HISTORY) for p in partners)
    checked = [healths[p.pk].checked_at for p in partners if healths[p.pk].checked_at]
    since_check = max(min(checked, default=now - HOUR), now - HOUR)
    days = sorted({str(partner.local_now(now).date()) for partner in partners})
    return partners_activity(partners=partners, since=since, since_check=since_check, now=now, days=days)


def partner_rollup(
    *,
    partner: Partner,
    health: PartnerHealth,
    activity: PartnerActivity,
    now: datetime.datetime,
    paused_publishers: list[Publisher],
) -> dict[str, Any]:
    """What the partner's storage said since the last check (`activity`, read for many
    partners at once: conversions.cross_partner.partners_activity), as the signals need it:
    its hours (for HourlyCount: `buckets`), the last postback, the last hour, and the
    refusals since the last check (a delta of today's counters). Raises
    PartnerDatabaseUnavailable or DatabaseError when a paused publisher's deliveries cannot be read."""
    today = str(partner.local_now(now).date())
    counters = activity.counters.get(today, {})
    seen = health.refusals_seen or {}
    refused_reasons = {}
    if seen.get("day") == today:
        for name, count in counters.items():
            delta = count - seen.get("counts", {}).get(name, 0)
            reason = name.removeprefix(REJECTED_PREFIX)
            if delta > 0 and reason in REFUSAL_REASONS:
                refused_reasons[reason] = delta
    elif seen:
        # A new day: today's counters are all since the last check (they started at 0).
        refused_reasons = {
            name.removeprefix(REJECTED_PREFIX): count
            for name, count in counters.items()
            if name.removeprefix(REJECTED_PREFIX) in REFUSAL_REASONS and count
        }
    paused, failing = _publishers_of(partner=partner, now=now, watched=paused_publishers)
    return {
        "buckets": activity.buckets,
        "counted_through": hour_floor(now),
        "last_received_at": activity.newest,
        "last_hour": activity.last_hour,
        "invalid": activity.invalid,
        "received_since_check": activity.since_check,
        "refused": sum(refused_reasons.values()),
        "refused_reasons": refused_reasons,
        "refusals_seen": {"day": today, "counts": counters},
        "publishers_paused": paused,
        "publishers_failing": failing,
    }


def paused_publishers_read() -> list[Publisher]:
    """The active publishers that are paused or failing (consecutive failed deliveries), with
    the partners they are restricted to (one read per check)."""
    watched = Q(paused_at__isnull=False) | Q(consecutive_failures__gt=0)
    return list(Publisher.objects.filter(watched, is_active=True).prefetch_related("partners"))


def _publishers_of(
    *, partner: Partner, now: datetime.datetime, watched: list[Publisher]
) -> tuple[list[str], dict[str, int]]:
    """(paused publishers, failing ones -> their consecutive failures) of the partner's
    conversions: those restricted to it, and those of every network that had a delivery of
    its conversions in the last week (the partner's storage is read only for those)."""
    mine, anywhere = [], []
    for publisher in watched:
        linked = {p.pk for p in publisher.partners.all()}
        if partner.pk in linked:
            mine.append(publisher)
        elif not linked:
            anywhere.append(publisher)
    if anywhere:
        with partner_database(partner) as alias:
            used = set(
                Delivery.objects.using(alias)
                .filter(publisher_id__in=[p.pk for p in anywhere], created_at__gte=now - WEEK)
                .values_list("publisher_id", flat=True)
                .distinct()
            )
        mine += [p for p in anywhere if p.pk in used]
    paused = sorted(p.code for p in mine if p.paused_at is not None)
    failing = {p.code: p.consecutive_failures for p in sorted(mine, key=lambda p: p.code) if p.paused_at is None}
    return paused, failing


def partner_signals(
    *,
    partner: Partner,
    health: PartnerHealth,
    now: datetime.datetime,
    counts: dict[datetime.datetime, tuple[int, int]],
    first_hour: datetime.datetime | None,
    sources: list[ReportSource],
    paused_publishers: list[Publisher],
    activity: PartnerActivity | Unreadable,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the signals, what to store on PartnerHealth — `buckets` for HourlyCount among it)
    for one partner; `counts` and `first_hour` from the batch reads above, updated with
    this check's roll-up."""
    try:
        if isinstance(activity, Unreadable):
            raise PartnerDatabaseUnavailable(partner.database_alias, activity.reason)
        rolled = partner_rollup(
            partner=partner, health=health, activity=activity, now=now, paused_publishers=paused_publishers
        )
    except (PartnerDatabaseUnavailable, DatabaseError) as exc:
        reason = exc.reason if isinstance(exc, PartnerDatabaseUnavailable) else error_first_line(exc)
        signals = {
            "storage_ok": False,
            "storage_error": str(reason)[:300],
            "last_received_at": _iso(health.last_received_at),
            **_reconciliation_signals(sources),
        }
        return signals, {}
    # This check's hours replace what the batch read (the current hour has grown since).
    counts = {**counts, **rolled["buckets"]}
    if rolled["buckets"]:
        first_hour = min(first_hour or now, *rolled["buckets"])
    last = rolled["last_received_at"]
    age = (now - last).total_seconds() if last else None
    normal_hour = _normal(counts, first_hour, now - HOUR, now)
    expected = None
    if last is not None:
        expected = _normal(counts, first_hour, max(last, now - SILENCE_WINDOW), now, total=True)
    local_midnight = datetime.datetime.combine(partner.local_now(now).date(), datetime.time.min, tzinfo=partner.tzinfo)
    top = hour_floor(now)
    chart = []
    for back in range(CHART_HOURS - 1, -1, -1):
        hour = top - back * HOUR
        received, invalid = counts.get(hour, (0, 0))
        chart.append([hour.isoformat(), received, invalid])
    today = sum(counts.get(hour, (0, 0))[0] for hour in _hours(local_midnight, now))
    signals = {
        "storage_ok": True,
        "storage_error": "",
        "last_received_at": _iso(last),
        "last_received_age_seconds": age,
        "last_hour": rolled["last_hour"],
        "normal_hour": None if normal_hour is None else round(normal_hour, 2),
        "expected_since_last": None if expected is None else round(expected, 2),
        "today": today,
        "today_normal": _rounded(_normal(counts, first_hour, local_midnight, now, total=True)),
        "invalid": rolled["invalid"],
        "invalid_share": (rolled["invalid"] / rolled["last_hour"]) if rolled["last_hour"] else None,
        "received_since_check": rolled["received_since_check"],
        "refused": rolled["refused"],
        "refused_reasons": rolled["refused_reasons"],
        "refused_share": (
            rolled["refused"] / (rolled["refused"] + rolled["received_since_check"])
            if rolled["refused"] + rolled["received_since_check"]
            else None
        ),
        "publishers_paused": rolled["publishers_paused"],
        "publishers_failing": rolled["publishers_failing"],
        "hourly_48h": chart,
        "gap_p95_minutes": None if not normal_hour else round(60 * 2.996 / normal_hour, 1),
        **_reconciliation_signals(sources),
    }
    stored = {
        "buckets": rolled["buckets"],
        "counted_through": rolled["counted_through"],
        "last_received_at": last,
        "refusals_seen": rolled["refusals_seen"],
    }
    return signals, stored


def _hours(start: datetime.datetime, end: datetime.datetime) -> Iterable[datetime.datetime]:
    hour = hour_floor(start)
    while hour < end:
        yield hour
        hour += HOUR


def _normal(
    counts: dict[datetime.datetime, tuple[int, int]],
    first_hour: datetime.datetime | None,
    start: datetime.datetime,
    end: datetime.datetime,
    *,
    total: bool = False,
) -> float | None:
    """The mean over the last four weeks of postbacks received in [start, end) shifted by a
    week each (partial hours pro rata), counting only weeks after the partner's first
    counted hour; None without such a week. Per hour of the window unless `total`."""
    if first_hour is None or end <= start:
        return None
    sums, weeks = 0.0, 0
    for week in range(1, WEEKS + 1):
        shifted_start, shifted_end = start - week * WEEK, end - week * WEEK
        if shifted_start < first_hour:
            continue
        weeks += 1
        for hour in _hours(shifted_start, shifted_end):
            overlap = (min(hour + HOUR, shifted_end) - max(hour, shifted_start)).total_seconds() / 3600
            sums += counts.get(hour, (0, 0))[0] * overlap
    if not weeks:
        return None
    mean = sums / weeks
    return mean if total else mean / ((end - start).total_seconds() / 3600)


def _reconciliation_signals(sources: list[ReportSource]) -> dict[str, Any]:
    runs, failing = {}, {}
    best = None
    for source in sources:
        if source.last_run_error:
            failing[source.name] = source.last_run_error
            continue
        counts = source.last_run_counts or {}
        if not counts or source.last_run_at is None:
            continue
        report_rows = sum(n for kind, n in counts.items() if kind != MISSING_THERE)
        run = {
            "missing_here": counts.get(MISSING_HERE, 0),
            "report_rows": report_rows,
            "match_rate": (counts.get(MATCHED, 0) / report_rows) if report_rows else None,
            "at": source.last_run_at.isoformat(),
            "failed": False,
        }
        runs[source.name] = run
        if best is None or run["at"] > best["at"]:
            best = run
    return {"reconciliations": runs, "reconciliation": best, "sources_failing": failing}


def _iso(moment: datetime.datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
