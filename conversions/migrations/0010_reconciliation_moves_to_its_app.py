"""The reconciliation models moved to their own app (`reconciliation`): state only.

Their tables (report_sources in `default`; reconciliation_runs and reconciliation_rows in
each partner's database) stay where they are, with their rows; reconciliation.0001_initial
takes them over in the migration state.
"""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("conversions", "0009_reconciliation_run_progress"),
        ("reconciliation", "0001_initial"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.RemoveField(
                    model_name="reportsource",
                    name="partner",
                ),
                migrations.DeleteModel(
                    name="ReconciliationRow",
                ),
                migrations.DeleteModel(
                    name="ReconciliationRun",
                ),
                migrations.DeleteModel(
                    name="ReportSource",
                ),
            ]
        ),
    ]
