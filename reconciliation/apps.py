from django.apps import AppConfig
from django.db.models.signals import pre_delete


class ReconciliationConfig(AppConfig):
    name = "reconciliation"
    verbose_name = "Reconciliation"

    def ready(self) -> None:
        from infra.databases import partner_models_register
        from infra.metrics import metrics_registry_add
        from partners.services import admin_grants_add
        from reconciliation.metrics import reconciliation_registry
        from reconciliation.runs import jobs_register

        # Runs and their rows live in each partner's database; report sources (configuration) in `default`.
        partner_models_register(self.label, "ReconciliationRun", "ReconciliationRow", "ReportUpload")
        # The last reconciliation per partner comes from `default`, not from the scraped process.
        metrics_registry_add(reconciliation_registry)
        # Queued runs and daily schedules, performed by the background worker (deliver_postbacks).
        jobs_register()
        # A deleted source's queued runs would wait forever: they fail, saying why.
        pre_delete.connect(_source_deleted, sender="reconciliation.ReportSource", dispatch_uid="reconciliation.source")

        # Report sources, and with them reconciliation runs: account managers start them and
        # recover from them; analysts read them.
        admin_grants_add("Account managers", ("reconciliation", "reportsource", ("add", "change", "view")))
        admin_grants_add("Analysts", ("reconciliation", "reportsource", ("view",)))


def _source_deleted(sender, instance, **kwargs) -> None:
    from reconciliation.runs import source_runs_close

    source_runs_close(source=instance)
