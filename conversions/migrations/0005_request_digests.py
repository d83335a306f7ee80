from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("conversions", "0004_search_and_stats_indexes")]

    operations = [
        migrations.AddField(
            model_name="partnerconversion",
            name="request_digests",
            field=models.JSONField(
                blank=True,
                default=list,
                help_text="On an original: digests of the requests applied to it, so a replayed one is a duplicate.",
            ),
        ),
    ]
