from django.apps import AppConfig


class ConversionsConfig(AppConfig):
    name = "conversions"
    verbose_name = "Conversions"

    def ready(self) -> None:
        from partners.databases import partner_models_register

        # These live in each partner's own database; the report sources (configuration) in `default`.
        partner_models_register(
            self.label,
            "PartnerConversion",
            "ConversionChange",
            "DailyCounter",
            "ReconciliationRun",
            "ReconciliationRow",
        )
