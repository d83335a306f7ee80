"""Prometheus metrics and the protected `GET /metrics` endpoint.

Under gunicorn, gunicorn.conf.py sets PROMETHEUS_MULTIPROC_DIR before anything imports
prometheus_client, so every worker writes its samples there and a scrape sums them.
"""

import hmac
import ipaddress
import os
import time

from django.conf import settings
from django.db import connections
from django.db.backends.signals import connection_created
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_GET
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from conversions.request_meta import client_ip

POSTBACKS = Counter("postback_requests", "Postbacks answered, by partner and outcome.", ["partner", "outcome"])
LATENCY = Histogram(
    "postback_request_duration_seconds",
    "Time to answer a postback, by partner.",
    ["partner"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
DATABASE_ERRORS = Counter(
    "postback_database_errors", "Postbacks answered 503 because a database failed, by alias.", ["alias"]
)
CONNECTIONS_OPENED = Counter(
    "postback_database_connections_opened",
    "New persistent database connections opened, by alias (pooled ones: the pool gauge).",
    ["alias"],
)
POOL = Gauge(
    "postback_database_pool_connections",
    "psycopg pool per alias (state: size, available, waiting, opened), summed over workers.",
    ["alias", "state"],
    multiprocess_mode="livesum",
)
POOL_REFRESH_SECONDS = 1.0
_pool_refreshed_at = float("-inf")


def _count_connection(sender, connection, **kwargs) -> None:
    # With a pool Django signals every checkout; the pool's own stats count its connections.
    if "pool" not in connection.settings_dict.get("OPTIONS", {}):
        CONNECTIONS_OPENED.labels(alias=connection.alias).inc()


connection_created.connect(_count_connection, dispatch_uid="postback_site.metrics.connections")


# The labelled series of each (partner, outcome), looked up once: `labels()` costs more
# than the increment on the hot path.
_postback_series: dict[tuple[str, str], tuple[Counter, Histogram]] = {}


def postback_record(*, partner: str, outcome: str, seconds: float, database_alias: str | None) -> None:
    """Count one answered postback; `database_alias` when a database made it fail."""
    series = _postback_series.get((partner, outcome))
    if series is None:
        series = (POSTBACKS.labels(partner=partner, outcome=outcome), LATENCY.labels(partner=partner))
        _postback_series[(partner, outcome)] = series
    series[0].inc()
    series[1].observe(seconds)
    if database_alias is not None:
        DATABASE_ERRORS.labels(alias=database_alias).inc()
    _pool_gauges_refresh()


def _pool_gauges_refresh(force: bool = False) -> None:
    # At most once a second per worker: the pool's stats are cheap but not free.
    global _pool_refreshed_at
    now = time.monotonic()
    if not force and now - _pool_refreshed_at < POOL_REFRESH_SECONDS:
        return
    _pool_refreshed_at = now
    for alias, config in list(connections.settings.items()):
        if "pool" not in config.get("OPTIONS", {}):
            continue
        pool = getattr(connections[alias], "_connection_pools", {}).get(alias)
        if pool is None:
            continue
        stats = pool.get_stats()
        POOL.labels(alias=alias, state="size").set(stats.get("pool_size", 0))
        POOL.labels(alias=alias, state="available").set(stats.get("pool_available", 0))
        POOL.labels(alias=alias, state="waiting").set(stats.get("requests_waiting", 0))
        POOL.labels(alias=alias, state="opened").set(stats.get("connections_num", 0))


def metrics_access_error(request: HttpRequest) -> JsonResponse | None:
    """None when the caller may read metrics, else the 401/403 to answer."""
    token = settings.METRICS_TOKEN
    header = request.META.get("HTTP_AUTHORIZATION", "")
    if header:
        scheme, _, supplied = header.partition(" ")
        # Bytes: compare_digest refuses str with non-ASCII characters (TypeError, a 500).
        if token and scheme.lower() == "bearer" and hmac.compare_digest(supplied.strip().encode(), token.encode()):
            return None
        return JsonResponse({"status": "error", "message": "Invalid metrics token"}, status=401)
    address = client_ip(request.META, trusted_proxies=settings.TRUSTED_PROXY_COUNT)
    if address and _address_allowed(address, settings.METRICS_ALLOWED_IPS):
        return None
    if token:
        response = JsonResponse(
            {"status": "error", "message": "Metrics need 'Authorization: Bearer <METRICS_TOKEN>'"}, status=401
        )
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    return JsonResponse(
        {
            "status": "error",
            "message": f"Metrics are not available to {address}: set METRICS_TOKEN or METRICS_ALLOWED_IPS",
        },
        status=403,
    )


def _address_allowed(address: str, allowed: list[str]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    for entry in allowed:
        try:
            if ip in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            continue
    return False


@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    """`GET /metrics`: Prometheus text format, for a bearer token or an allowed address."""
    refused = metrics_access_error(request)
    if refused is not None:
        return refused
    _pool_gauges_refresh(force=True)
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
