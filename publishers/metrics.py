"""Forwarding metrics: deliveries by publisher and outcome; queue depth and age of the oldest due delivery."""

from prometheus_client import Counter, Gauge

DELIVERIES = Counter(
    "publisher_deliveries",
    "Delivery attempts, by publisher and outcome (delivered, pending, failed, error).",
    ["publisher", "outcome"],
)
QUEUE_DEPTH = Gauge(
    "publisher_delivery_queue_depth",
    "Deliveries pending (due or waiting for a retry).",
    multiprocess_mode="livemostrecent",
)
OLDEST_DUE_SECONDS = Gauge(
    "publisher_delivery_oldest_due_seconds",
    "Age of the oldest delivery due now (0: none).",
    multiprocess_mode="livemostrecent",
)
_series: dict[tuple[str, str], Counter] = {}


def delivery_count(*, publisher: str, outcome: str) -> None:
    series = _series.get((publisher, outcome))
    if series is None:
        series = _series[(publisher, outcome)] = DELIVERIES.labels(publisher=publisher, outcome=outcome)
    series.inc()


def delivery_gauges_refresh() -> None:
    """Queue depth and oldest due delivery over every served partner's database (at scrape time)."""
    from publishers.selectors import deliveries_queue_state

    depth, oldest = deliveries_queue_state()
    QUEUE_DEPTH.set(depth)
    OLDEST_DUE_SECONDS.set(oldest)
