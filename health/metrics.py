"""Channel health's metrics, read from `default` at scrape time (filled by the checker).

The checker runs in the background worker, not in the process that is scraped, so the
figures come from what it stored: two queries on `default`, whatever the number of partners.
"""

import logging
from collections.abc import Iterator

from django.db.models import Count
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from health.models import Incident, PartnerHealth

logger = logging.getLogger("health")


class HealthCollector(Collector):
    """Each partner's last postback, the open incidents by partner and rule, and the last check."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        last_received = GaugeMetricFamily(
            "postback_partner_last_received_timestamp_seconds",
            "When each partner's last postback was received, as the checker last saw it (Unix time).",
            labels=["partner"],
        )
        open_incidents = GaugeMetricFamily(
            "postback_health_open_incidents",
            "Open incidents, by partner and rule (only the combinations with one open).",
            labels=["partner", "rule"],
        )
        open_total = GaugeMetricFamily("postback_health_open_incidents_total", "Open incidents, all partners.")
        checked = GaugeMetricFamily(
            "postback_health_checked_timestamp_seconds", "When the checker last evaluated a partner (Unix time)."
        )
        try:
            partners = list(
                PartnerHealth.objects.order_by("partner__partner_code").values_list(
                    "partner__partner_code", "last_received_at", "checked_at"
                )
            )
            incidents = list(
                Incident.objects.filter(state=Incident.OPEN)
                .values_list("partner__partner_code", "rule")
                .annotate(open=Count("id"))
                .order_by("partner__partner_code", "rule")
            )
        except Exception:  # noqa: BLE001 - a scrape never fails for these figures (e.g. `default` unreachable)
            logger.warning("health metrics unavailable: `default` cannot be read", exc_info=True)
            return
        for code, at, _ in partners:
            if at is not None:
                last_received.add_metric([code], at.timestamp())
        latest_check = max((at for _, _, at in partners if at is not None), default=None)
        for code, rule, count in incidents:
            open_incidents.add_metric([code, rule], float(count))
        open_total.add_metric([], float(sum(count for _, _, count in incidents)))
        yield last_received
        yield open_incidents
        yield open_total
        if latest_check is not None:
            checked.add_metric([], latest_check.timestamp())
            yield checked


# auto_describe off: describing by collecting would query `default` when the app loads.
health_registry = CollectorRegistry(auto_describe=False)
health_registry.register(HealthCollector())
