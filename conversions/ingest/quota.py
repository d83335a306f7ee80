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
from django.utils import timezone

from conversions.ingest.counters import daily_counter_increment
from conversions.ingest.refusals import Refusal
from infra.databases import partner_database
from infra.state import process_state_register
from partners.models import Partner

logger = logging.getLogger("conversions.security")

REQUESTS_COUNTER = "requests"

_redis_lock = threading.Lock()
_redis_clients: dict[str, object] = {}
_redis_scripts: dict[int, object] = {}


def partner_quota_consume(*, partner: Partner, now: datetime.datetime | None = None) -> Refusal | None:
    """Count one postback against the partner's quota for today; a 429 rejection when over it.

    Raises PartnerDatabaseUnavailable when the counter's database cannot be reached.
    """
    limit = partner.max_daily_requests
    if not limit:
        return None  # 0 = no limit
    now = now or timezone.now()
    local_now = partner.local_now(now)
    day = local_now.date()
    # Raises PartnerDatabaseUnavailable when the database counter cannot be reached.
    count = quota_ledger.consume(
        key=(partner.database_name, partner.pk, day),
        limit=limit,
        increment=lambda by, floor: _increment(partner, day, now, next_local_midnight(local_now), by, floor),
    )
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
    return Refusal(
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

    def consume(self, *, key: tuple, limit: int, increment: Callable[[int, int], int]) -> int:
        """Count one postback; return its place in the day (allowed while <= `limit`).

        `increment(by, floor)` adds `by` to the shared counter and returns its new
        total, never less than `floor + by` (`floor`: the total this process last saw,
        so a counter taking over from another store starts where that one was).
        """
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
                total = increment(take, tally.shared) if take else tally.shared
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
process_state_register("conversions.quota_ledger", quota_ledger.clear)


def _increment(
    partner: Partner, day: datetime.date, now: datetime.datetime, midnight: datetime.datetime, by: int, floor: int
) -> int:
    client = redis_client()
    if client is not None and redis_breaker.admit():
        try:
            total = _redis_increment(client, partner, day, midnight, by, floor)
        except Exception as exc:  # any Redis failure: keep enforcing with the database counter
            redis_breaker.failed(exc)
        else:
            redis_breaker.answered()
            return total
    with partner_database(partner) as alias:
        return daily_counter_increment(
            alias=alias, partner_id=partner.pk, day=day, name=REQUESTS_COUNTER, now=now, by=by, floor=floor
        )


class RedisBreaker:
    """Redis treated like a database that may hang: after a failure (REDIS_TIMEOUT at
    most) it is skipped for REDIS_BREAKER_SECONDS, counting in the partner database
    meanwhile; then one request tries it again while the others keep skipping it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._skip_until = 0.0
        self._probing = False

    def admit(self) -> bool:
        if not self._skip_until:
            return True
        with self._lock:
            if not self._skip_until:
                return True
            if self._probing or time.monotonic() < self._skip_until:
                return False
            self._probing = True
            return True

    def failed(self, exc: Exception) -> None:
        with self._lock:
            first = not self._skip_until
            self._skip_until = time.monotonic() + settings.REDIS_BREAKER_SECONDS
            self._probing = False
        if first:
            logger.warning(
                "Redis quota counter unavailable (%s); counting in the partner databases for %ss",
                exc,
                settings.REDIS_BREAKER_SECONDS,
            )

    def answered(self) -> None:
        if self._skip_until:
            with self._lock:
                self._skip_until = 0.0
                self._probing = False
            logger.warning("Redis quota counter answers again; counting in Redis")

    def reset(self) -> None:
        with self._lock:
            self._skip_until = 0.0
            self._probing = False


redis_breaker = RedisBreaker()
process_state_register("conversions.quota_redis_breaker", redis_breaker.reset)


def quota_key(partner: Partner, day: datetime.date) -> str:
    # The database name keeps two deployments that share a Redis (and reuse ids) apart.
    return f"{settings.REDIS_KEY_PREFIX}:quota:{partner.database_name}:{partner.pk}:{day.isoformat()}"


# INCRBY that never leaves the total below `floor + by` (the total this process saw in
# the database counter while Redis was skipped), with the key's expiry, in one call.
_REDIS_INCREMENT = """
local total = redis.call('INCRBY', KEYS[1], ARGV[1])
local least = tonumber(ARGV[2]) + tonumber(ARGV[1])
if total < least then
    redis.call('SET', KEYS[1], least)
    total = least
end
redis.call('EXPIREAT', KEYS[1], ARGV[3])
return total
"""


def _redis_increment(
    client, partner: Partner, day: datetime.date, midnight: datetime.datetime, by: int, floor: int
) -> int:
    script = _redis_scripts.get(id(client))
    if script is None:
        script = _redis_scripts[id(client)] = client.register_script(_REDIS_INCREMENT)
    # Kept an hour past midnight so a request in flight at midnight still finds its day.
    expire_at = int(midnight.timestamp()) + 3600
    return int(script(keys=[quota_key(partner, day)], args=[by, floor, expire_at], client=client))


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
