import django.db.models
from django.db import migrations

import publishers.models


class Migration(migrations.Migration):
    dependencies = [("publishers", "0001_initial")]

    operations = [
        migrations.AlterField(
            model_name="publisher",
            name="events",
            field=django.db.models.JSONField(
                blank=True, default=publishers.models.default_events, validators=[publishers.models.validate_events]
            ),
        ),
    ]
