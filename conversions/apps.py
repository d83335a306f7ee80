from django.apps import AppConfig


class ConversionsConfig(AppConfig):
    name = "conversions"
    verbose_name = "Conversions"

    def ready(self) -> None:
        from infra.databases import partner_models_register

        # These live in each partner's own database.
        partner_models_register(
            self.label,
            "PartnerConversion",
            "ConversionChange",
            "DailyCounter",
            # Its migrations 0006 and 0009 still create these tables on a new partner database
            # (the models moved to the reconciliation app, their migrations stayed here).
            "ReconciliationRun",
            "ReconciliationRow",
        )
