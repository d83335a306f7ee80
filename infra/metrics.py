"""Prometheus metrics and the protected `GET /metrics` endpoint.

Under gunicorn, gunicorn.conf.py sets PROMETHEUS_MULTIPROC_DIR before anything imports
prometheus_client, so every worker writes its samples there and a scrape sums them.
"""

import hmac
import logging
import os
import time
from collections.abc import Callable

from django.conf import settings
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

from infra.addresses import address_allowed, networks_parse
from infra.databases.broker import connection_broker
from infra.request_meta import request_client_ip

logger = logging.getLogger("postback_site.metrics")

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
    "Database connections opened, by alias (flat under load: connections are reused).",
    ["alias"],
)
CONNECTIONS_CLOSED = Counter(
    "postback_database_connections_closed",
    "Database connections closed, by alias and why (idle, evicted, retired, broken, closed).",
    ["alias", "reason"],
)
CONNECTIONS = Gauge(
    "postback_database_connections",
    "Database connections held now (state: open, in_use, idle), summed over workers.",
    ["state"],
    multiprocess_mode="livesum",
)
CONNECTIONS_LIMIT = Gauge(
    "postback_database_connections_limit",
    "DB_MAX_CONNECTIONS summed over workers: the most connections this instance can hold.",
    multiprocess_mode="livesum",
)
CONNECTIONS_PEAK = Gauge(
    "postback_database_connections_peak",
    "Each worker's highest number of open connections since it started, summed (>= the instance's peak).",
    multiprocess_mode="livesum",
)
_connections_refreshed_at = float("-inf")


def _connection_event(event: str, alias: str) -> None:
    # Called by the broker when it opens or closes a connection, and once a second.
    global _connections_refreshed_at
    if event == "opened":
        CONNECTIONS_OPENED.labels(alias=alias).inc()
    elif event.startswith("closed:"):
        CONNECTIONS_CLOSED.labels(alias=alias, reason=event.removeprefix("closed:")).inc()
    now = time.monotonic()
    if event == "tick" or now - _connections_refreshed_at >= 1.0:
        _connections_refreshed_at = now
        connections_gauges_refresh()


def connections_gauges_refresh() -> None:
    """Write this process's connection counts into the gauges."""
    stats = connection_broker.stats()
    CONNECTIONS.labels(state="open").set(stats.open)
    CONNECTIONS.labels(state="in_use").set(stats.in_use)
    CONNECTIONS.labels(state="idle").set(stats.idle)
    CONNECTIONS_LIMIT.set(stats.limit)
    CONNECTIONS_PEAK.set(stats.peak)


connection_broker.listen(_connection_event)

# Gauges an app computes when /metrics is read (e.g. the delivery queue), registered by the app.
_scrape_hooks: list[Callable[[], None]] = []
# Registries an app exports beside the process's own (e.g. figures read from `default`).
_extra_registries: list[CollectorRegistry] = []


def metrics_scrape_hook(hook: Callable[[], None]) -> None:
    """Run `hook` before each scrape (registering twice is a no-op); a failing hook is logged, not fatal."""
    if hook not in _scrape_hooks:
        _scrape_hooks.append(hook)


# The labelled series of each (partner, outcome), looked up once: `labels()` costs more
# than the increment on the hot path.
_postback_series: dict[tuple[str, str], tuple[Counter, Histogram]] = {}


def metrics_registry_add(registry: CollectorRegistry) -> None:
    """Export `registry` at every scrape, after the process's own series (adding it twice is a no-op)."""
    if registry not in _extra_registries:
        _extra_registries.append(registry)


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
    address = request_client_ip(request)
    if address and address_allowed(address, _metrics_networks()):
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


def _metrics_networks() -> list:
    networks = []
    for entry in settings.METRICS_ALLOWED_IPS:
        try:
            networks.extend(networks_parse(entry))
        except ValueError:
            continue  # an entry that is no address or range allows nobody
    return networks


@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    """`GET /metrics`: Prometheus text format, for a bearer token or an allowed address."""
    refused = metrics_access_error(request)
    if refused is not None:
        return refused
    connections_gauges_refresh()
    for hook in _scrape_hooks:
        try:
            hook()
        except Exception:  # a gauge that cannot be computed must not hide the others
            logging.getLogger("postback_site.metrics").exception(
                "metrics hook %s failed", getattr(hook, "__name__", hook)
            )
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    body = generate_latest(registry) + b"".join(generate_latest(extra) for extra in _extra_registries)
    return HttpResponse(body, content_type=CONTENT_TYPE_LATEST)
