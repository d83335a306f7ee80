from django.apps import AppConfig


class HealthConfig(AppConfig):
    name = "health"
    verbose_name = "Channel health"

    def ready(self) -> None:
        from health.checker import jobs_register
        from health.metrics import health_registry
        from infra.metrics import metrics_registry_add
        from partners.services import admin_grants_add

        # The checker and the notifier, run by the background worker (deliver_postbacks).
        jobs_register()
        metrics_registry_add(health_registry)
        admin_grants_add(
            "Account managers",
            ("health", "incident", ("view",)),
            ("health", "healthsettings", ("add", "change", "view")),
        )
        admin_grants_add("Analysts", ("health", "incident", ("view",)))
