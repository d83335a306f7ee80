"""Create the `Account managers` and `Analysts` admin groups with their permissions."""

from django.db import migrations


def create_admin_groups(apps, schema_editor):
    from partners.services import admin_groups_ensure

    admin_groups_ensure(apps=apps)


class Migration(migrations.Migration):
    dependencies = [
        ("partners", "0003_partner_security"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("conversions", "0001_initial"),
    ]

    operations = [migrations.RunPython(create_admin_groups, migrations.RunPython.noop)]
