"""The dashboards' figures on conversion time from a covering index, as on received time.

The dashboards default to the days conversions happened on (conversion_datetime). The
stats on received time read `stats_accepted` and `stats_sub_id` alone (index-only); on
conversion time the same figures needed the table's rows (a heap read per conversion).
This index carries what the stats, the top sub_id prefixes and the previous period's
totals read, keyed by conversion time. PostgreSQL only: SQLite's embedded databases are
small, and it cannot use INCLUDE.
"""

from django.db import migrations

INDEX = (
    "CREATE INDEX IF NOT EXISTS stats_converted ON partner_conversions (conversion_datetime) "
    "INCLUDE (partner_id, offer_id, is_duplicate, status, usd_sale_amount, usd_earning, sub_id) "
    "WHERE processing_error IS NULL"
)


def create_index(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute(INDEX)
    schema_editor.execute("ANALYZE partner_conversions")


def drop_index(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute("DROP INDEX IF EXISTS stats_converted")


class Migration(migrations.Migration):
    dependencies = [("conversions", "0010_reconciliation_moves_to_its_app")]

    operations = [migrations.RunPython(create_index, drop_index, elidable=False)]
