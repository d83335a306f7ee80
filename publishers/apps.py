from django.apps import AppConfig


class PublishersConfig(AppConfig):
    name = "publishers"
    verbose_name = "Publishers"

    def ready(self) -> None:
        from conversions.ingest.hooks import decision_listener
        from partners.databases import partner_models_register
        from publishers.deliveries import deliveries_announced

        # The outbox lives in each partner's database, beside the conversions it is written with.
        partner_models_register(self.label, "delivery", "deliveryattempt")
        decision_listener(deliveries_announced)
