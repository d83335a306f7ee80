"""The daily quota (`Partner.max_daily_requests`), shared by every worker and instance.

One atomic increment per postback: Redis INCR when REDIS_URL is set, else an upsert of
the `requests` counter in the partner's own database. The day is the partner's local
day; over the quota a postback gets 429 with Retry-After until the partner's midnight.
"""

import datetime
import logging
import math
import threading

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
    midnight = next_local_midnight(local_now)
    try:
        count = _increment(partner, local_now.date(), now, midnight)
    except DatabaseError as exc:
        # The partner database is away: answer 503 now rather than wait for it twice.
        raise PartnerDatabaseUnavailable(partner.database_alias, str(exc).strip() or exc.__class__.__name__) from exc
    if count <= limit:
        return None
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


def _increment(partner: Partner, day: datetime.date, now: datetime.datetime, midnight: datetime.datetime) -> int:
    client = redis_client()
    if client is not None:
        try:
            return _redis_increment(client, partner, day, midnight)
        except Exception as exc:  # any Redis failure: keep enforcing with the database counter
            logger.warning("Redis quota counter unavailable (%s); counting in the partner database", exc)
    return daily_counter_increment(
        alias=partner.database_alias, partner_id=partner.pk, day=day, name=REQUESTS_COUNTER, now=now
    )


def quota_key(partner: Partner, day: datetime.date) -> str:
    # The database name keeps two deployments that share a Redis (and reuse ids) apart.
    return f"{settings.REDIS_KEY_PREFIX}:quota:{partner.database_name}:{partner.pk}:{day.isoformat()}"


def _redis_increment(client, partner: Partner, day: datetime.date, midnight: datetime.datetime) -> int:
    key = quota_key(partner, day)
    pipeline = client.pipeline(transaction=True)
    pipeline.incr(key)
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
