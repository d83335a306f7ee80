from django.apps import AppConfig


class PublishersConfig(AppConfig):
    name = "publishers"
    verbose_name = "Publishers"

    def ready(self) -> None:
        from conversions.ingest.hooks import decision_listener
        from partners.databases import partner_models_register
        from partners.services import admin_grants_add
        from publishers.deliveries import deliveries_announced

        # The outbox lives in each partner's database, beside the conversions it is written with.
        partner_models_register(self.label, "delivery", "deliveryattempt")
        decision_listener(deliveries_announced)
        # Account managers configure publishers; analysts read them.
        admin_grants_add(
            "Account managers",
            ("publishers", "publisher", ("add", "change", "view")),
            ("publishers", "publisherofferpayout", ("add", "change", "delete", "view")),
        )
        admin_grants_add("Analysts", ("publishers", "publisher", ("view",)))
