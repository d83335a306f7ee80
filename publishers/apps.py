from django.apps import AppConfig


class PublishersConfig(AppConfig):
    name = "publishers"
    verbose_name = "Publishers"

    def ready(self) -> None:
        from conversions.ingest.hooks import decision_listener
        from infra.databases import partner_models_register
        from infra.metrics import metrics_scrape_hook
        from partners.services import admin_grants_add
        from publishers import (
            checks,  # noqa: F401  (registers the system check)
            reports,  # noqa: F401  (registers the dashboards' by-publisher breakdown)
        )
        from publishers.deliveries import deliveries_announced
        from publishers.metrics import delivery_gauges_refresh

        # The outbox lives in each partner's database, beside the conversions it is written with.
        partner_models_register(self.label, "delivery", "deliveryattempt")
        decision_listener(deliveries_announced)
        metrics_scrape_hook(delivery_gauges_refresh)
        # Account managers configure publishers; analysts read them.
        admin_grants_add(
            "Account managers",
            ("publishers", "publisher", ("add", "change", "view")),
            ("publishers", "publisherofferpayout", ("add", "change", "delete", "view")),
        )
        admin_grants_add("Analysts", ("publishers", "publisher", ("view",)))
