"""The dashboard's sub_id prefixes from a covering index; the admin's case-insensitive search.

On PostgreSQL, `UPPER(conversion_id)` serves the case-insensitive conversion_id search
(`acme-1` finds `ACME-1`) and `UPPER(LEFT(offer_name, 64))` with the pattern opclass the
offer-name prefix search under any collation (offer_name is unbounded text: the index
keeps its first 64 characters, so no long name can overflow a btree entry). SQLite's
LIKE is case-insensitive already, and embedded databases are small.
"""

from django.db import migrations, models

OFFER_NAME_PREFIX = 64  # conversions.admin.conversions.OFFER_NAME_INDEXED, kept in step
POSTGRES_INDEXES = {
    "conversion_id_upper": "UPPER((conversion_id)::text)",
    "offer_name_upper": f"UPPER(LEFT(offer_name, {OFFER_NAME_PREFIX})) text_pattern_ops",
}


def create_search_indexes(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    for name, expression in POSTGRES_INDEXES.items():
        schema_editor.execute(f"CREATE INDEX IF NOT EXISTS {name} ON partner_conversions ({expression})")
    # The planner knows nothing of an expression's values before an ANALYZE: without it, a
    # search would scan the newest-first index instead of these until autovacuum ran.
    schema_editor.execute("ANALYZE partner_conversions")


def drop_search_indexes(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    for name in POSTGRES_INDEXES:
        schema_editor.execute(f"DROP INDEX IF EXISTS {name}")


class Migration(migrations.Migration):
    dependencies = [("conversions", "0006_reconciliation")]

    operations = [
        migrations.AddIndex(
            model_name="partnerconversion",
            index=models.Index(
                condition=models.Q(("processing_error__isnull", True)),
                fields=["received_at"],
                include=("partner_id", "sub_id", "is_duplicate", "usd_sale_amount", "usd_earning"),
                name="stats_sub_id",
            ),
        ),
        migrations.RunPython(create_search_indexes, drop_search_indexes, elidable=False),
    ]
