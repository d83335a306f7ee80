from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("conversions", "0011_stats_on_conversion_time")]

    operations = [
        migrations.AddField(
            model_name="partnerconversion",
            name="imported_at",
            field=models.DateTimeField(
                blank=True,
                null=True,
                help_text=(
                    "When it was brought from the previous service's history (import_legacy); empty if received here."
                ),
            ),
        ),
    ]
