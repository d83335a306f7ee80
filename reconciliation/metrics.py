"""Prometheus series of each partner's last reconciliation, read from `default` at scrape time.

The runs happen in a job (`manage.py reconcile`) or an admin request, not in the process
that is scraped, so the figures come from the report sources' summary of their last run:
one query on `default`, whatever the number of partners.
"""

import logging
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from reconciliation.models import DISCREPANCY_KINDS, ReportSource

logger = logging.getLogger("conversions.reconciliation")


class ReconciliationCollector(Collector):
    """`postback_reconciliation_discrepancies{partner,kind}` and the last run's time, per partner."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        discrepancies = GaugeMetricFamily(
            "postback_reconciliation_discrepancies",
            "Rows of each partner's last reconciliation run, by kind of discrepancy.",
            labels=["partner", "kind"],
        )
        finished = GaugeMetricFamily(
            "postback_reconciliation_last_run_timestamp_seconds",
            "When each partner's last reconciliation run finished (Unix time).",
            labels=["partner"],
        )
        failed = GaugeMetricFamily(
            "postback_reconciliation_last_run_failed",
            "1 when each partner's last reconciliation run failed.",
            labels=["partner"],
        )
        latest: dict[str, tuple] = {}
        try:
            sources = ReportSource.objects.filter(last_run_at__isnull=False).values_list(
                "partner__partner_code", "last_run_at", "last_run_counts", "last_run_error"
            )
            for code, at, counts, error in sources.order_by("last_run_at"):
                latest[code] = (at, counts or {}, error)  # the newest run of the partner's sources wins
        except Exception:  # noqa: BLE001 - a scrape never fails for this summary (e.g. `default` unreachable)
            logger.warning("reconciliation metrics unavailable: the report sources cannot be read", exc_info=True)
            return
        for code, (at, counts, error) in sorted(latest.items()):
            finished.add_metric([code], at.timestamp())
            failed.add_metric([code], 1.0 if error else 0.0)
            for kind in DISCREPANCY_KINDS:
                discrepancies.add_metric([code, kind], float(counts.get(kind, 0)))
        yield discrepancies
        yield finished
        yield failed


reconciliation_registry = CollectorRegistry(auto_describe=False)
reconciliation_registry.register(ReconciliationCollector())
