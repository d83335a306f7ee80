"""`python manage.py init_partners`: idempotent bootstrap of a fresh install."""

import io
import time

from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from partners.databases import PartnerDatabaseUnavailable, database_create_if_missing
from partners.models import Partner
from partners.services import SEED_PARTNERS, admin_groups_ensure, partner_provision, partner_seed


class Command(BaseCommand):
    help = (
        "Migrate the configuration database, create the seed partners if absent (never "
        "changing existing ones) and create + migrate every active partner's database."
    )

    def handle(self, *args, **options) -> None:
        try:
            if database_create_if_missing("default"):
                self.stdout.write("default: database created")
        except PartnerDatabaseUnavailable as exc:
            raise CommandError(f"configuration database: {exc.reason}") from exc
        migrate_output = io.StringIO()
        call_command("migrate", database="default", interactive=False, verbosity=1, stdout=migrate_output)
        applied = migrate_output.getvalue().count(" OK")
        self.stdout.write(f"default: {'applied ' + str(applied) + ' migration(s)' if applied else 'schema up to date'}")

        created_groups = admin_groups_ensure()
        self.stdout.write(f"admin groups: {', '.join(created_groups) + ' created' if created_groups else 'up to date'}")

        for definition in SEED_PARTNERS:
            result = partner_seed(definition=definition)
            state = "created" if result.created else "exists, left unchanged"
            self.stdout.write(f"partner {result.partner.partner_code} ({result.partner.endpoint_path}): {state}")

        failures = []
        started = time.monotonic()
        provisioned = 0
        for partner in Partner.objects.filter(is_active=True).order_by("partner_code"):
            try:
                provision = partner_provision(partner=partner)
            except PartnerDatabaseUnavailable as exc:
                failures.append(partner.partner_code)
                self.stderr.write(f"database {exc.alias}: FAILED: {exc.reason}")
                continue
            provisioned += 1
            self.stdout.write(f"database {provision.describe()}")
        self.stdout.write(f"provisioned {provisioned} partner database(s) in {time.monotonic() - started:.1f} s")
        if failures:
            raise CommandError(f"could not provision: {', '.join(failures)}")
        self.stdout.write(self.style.SUCCESS("init_partners: done"))
