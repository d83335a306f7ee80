from django.apps import AppConfig


class ConversionsConfig(AppConfig):
    name = "conversions"
    verbose_name = "Conversions"

    def ready(self) -> None:
        from partners.databases import partner_models_register

        # Every model of this app lives in each partner's own database, none in `default`.
        partner_models_register(self.label)
