"""The daily quota (`Partner.max_daily_requests`), shared by every worker and instance.

The shared counter is Redis (INCRBY) when REDIS_URL is set, else the `requests` counter
in the partner's own database (one atomic upsert). The day is the partner's local day;
over the quota a postback gets 429 with Retry-After until the partner's midnight.

Far from the limit, each process adds its postbacks to the shared counter in batches
(every QUOTA_BATCH_SIZE postbacks or QUOTA_FLUSH_SECONDS), so a postback costs no extra
write and workers do not queue on one counter row. Within a margin of the limit
(a tenth of it, at least 10 batches) every postback is counted at once, so the limit
holds exactly unless several processes arrive with unflushed batches at the same time
(then by at most one batch each).
"""

import datetime
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from django.conf import settings
from django.db import DatabaseError
from django.utils import timezone

from conversions.counters import daily_counter_increment
from conversions.rejections import PostbackRejection, partner_local_now
from partners.databases import PartnerDatabaseUnavailable
from partners.models import Partner

logger = logging.getLogger("conversions.security")

REQUESTS_COUNTER = "requests"

_redis_lock = threading.Lock()
_redis_clients: dict[str, object] = {}


def partner_quota_consume(*, partner: Partner, now: datetime.datetime | None = None) -> PostbackRejection | None:
    """Count one postback against the partner's quota for today; a 429 rejection when over it.

    Raises PartnerDatabaseUnavailable when the counter's database cannot be reached.
    """
    limit = partner.max_daily_requests
    if not limit:
        return None  # 0 = no limit
    now = now or timezone.now()
    local_now = partner_local_now(partner, now)
    day = local_now.date()
    try:
        count = quota_ledger.consume(
            key=(partner.database_alias, partner.pk, day),
            limit=limit,
            increment=lambda by: _increment(partner, day, now, next_local_midnight(local_now), by),
        )
    except DatabaseError as exc:
        # The partner database is away: answer 503 now rather than wait for it twice.
        raise PartnerDatabaseUnavailable(partner.database_alias, str(exc).strip() or exc.__class__.__name__) from exc
    if count <= limit:
        return None
    midnight = next_local_midnight(local_now)
    retry_after = max(1, math.ceil((midnight - now).total_seconds()))
    if count == limit + 1:
        # Exactly one request sees limit + 1, whichever worker or instance it reaches.
        logger.error(
            "daily quota exceeded partner=%s limit=%s day=%s: answering 429 until %s",
            partner.partner_code,
            limit,
            local_now.date().isoformat(),
            midnight.isoformat(),
        )
    return PostbackRejection(
        reason="quota_exceeded",
        message=f"Partner '{partner.partner_code}' has used its {limit} postbacks for "
        f"{local_now.date().isoformat()}; retry after {midnight.isoformat()}",
        retry_after=retry_after,
    )


def next_local_midnight(local_now: datetime.datetime) -> datetime.datetime:
    """The start of the next local day, as an aware datetime in UTC (DST-safe)."""
    tomorrow = local_now.date() + datetime.timedelta(days=1)
    local_midnight = datetime.datetime.combine(tomorrow, datetime.time(0), tzinfo=local_now.tzinfo)
    return local_midnight.astimezone(datetime.UTC)


@dataclass
class _Tally:
    shared: int = 0  # the shared counter as this process last saw it
    unsent: int = 0  # counted here (already answered), not yet added to the shared counter
    queued: int = 0  # near the limit: waiting to be added one by one
    flushed_at: float = 0.0
    send_lock: threading.Lock = field(default_factory=threading.Lock)


class QuotaLedger:
    """One process's view of the shared daily counters, adding to them in batches."""

    def __init__(self) -> None:
        self._tallies: dict[tuple, _Tally] = {}
        self._lock = threading.Lock()

    def consume(self, *, key: tuple, limit: int, increment: Callable[[int], int]) -> int:
        """Count one postback; return its place in the day (allowed while <= `limit`)."""
        margin = max(limit // 10, settings.QUOTA_BATCH_SIZE * 10)
        with self._lock:
            tally = self._tallies.get(key)
            if tally is None:
                # A new day (or partner): forget the other days of this partner.
                self._tallies = {k: v for k, v in self._tallies.items() if k[:2] != key[:2]}
                tally = self._tallies[key] = _Tally(flushed_at=time.monotonic())
            place = tally.shared + tally.unsent + tally.queued + 1
            if limit - place >= margin:
                tally.unsent += 1
                due = (
                    tally.unsent >= settings.QUOTA_BATCH_SIZE
                    or time.monotonic() - tally.flushed_at >= settings.QUOTA_FLUSH_SECONDS
                )
                if not due:
                    return place
                exact = False
            else:
                tally.queued += 1
                exact = True
        # One send at a time per counter in this process, so the shared counter sees this
        # process's postbacks in the order they were counted: near the limit, the total
        # returned for a postback sent alone is its exact place.
        with tally.send_lock:
            with self._lock:
                take, tally.unsent = tally.unsent + exact, 0
                tally.queued -= exact
                tally.flushed_at = time.monotonic()
            try:
                total = increment(take) if take else tally.shared
            except Exception:
                with self._lock:
                    tally.unsent += take - exact  # already answered: keep them for the next send
                raise
            with self._lock:
                tally.shared = max(tally.shared, total)
        return total if exact else place

    def clear(self) -> None:
        with self._lock:
            self._tallies = {}


quota_ledger = QuotaLedger()


def _increment(
    partner: Partner, day: datetime.date, now: datetime.datetime, midnight: datetime.datetime, by: int
) -> int:
    client = redis_client()
    if client is not None:
        try:
            return _redis_increment(client, partner, day, midnight, by)
        except Exception as exc:  # any Redis failure: keep enforcing with the database counter
            logger.warning("Redis quota counter unavailable (%s); counting in the partner database", exc)
    return daily_counter_increment(
        alias=partner.database_alias, partner_id=partner.pk, day=day, name=REQUESTS_COUNTER, now=now, by=by
    )


def quota_key(partner: Partner, day: datetime.date) -> str:
    # The database name keeps two deployments that share a Redis (and reuse ids) apart.
    return f"{settings.REDIS_KEY_PREFIX}:quota:{partner.database_name}:{partner.pk}:{day.isoformat()}"


def _redis_increment(client, partner: Partner, day: datetime.date, midnight: datetime.datetime, by: int) -> int:
    key = quota_key(partner, day)
    pipeline = client.pipeline(transaction=True)
    pipeline.incrby(key, by)
    # Kept an hour past midnight so a request in flight at midnight still finds its day.
    pipeline.expireat(key, int(midnight.timestamp()) + 3600)
    count, _ = pipeline.execute()
    return int(count)


def redis_client():
    """The shared Redis client when REDIS_URL is set, else None (created once per process)."""
    url = settings.REDIS_URL
    if not url:
        return None
    client = _redis_clients.get(url)
    if client is None:
        with _redis_lock:
            client = _redis_clients.get(url)
            if client is None:
                import redis

                # The pool reconnects after a fork (gunicorn workers), so one client per process is safe.
                client = redis.Redis.from_url(
                    url, socket_timeout=settings.REDIS_TIMEOUT, socket_connect_timeout=settings.REDIS_TIMEOUT
                )
                _redis_clients[url] = client
    return client
