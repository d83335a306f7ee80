"""`python manage.py purge_conversions`: apply each partner's data retention."""

from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError

from conversions.retention import conversions_purge
from infra.databases import PartnerDatabaseUnavailable
from partners.models import Partner


class Command(BaseCommand):
    help = (
        "Delete conversions older than each partner's data_retention_days (by received_at), "
        "in short batches, in every partner's own database. Safe to run while postbacks arrive."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--dry-run", action="store_true", help="count what would be deleted, delete nothing")
        parser.add_argument("--partner", action="append", metavar="CODE", help="only this partner (repeatable)")
        parser.add_argument("--batch-size", type=int, default=1000, help="rows per delete transaction (default 1000)")

    def handle(self, *args, **options) -> None:
        if options["batch_size"] < 1:
            raise CommandError("--batch-size must be at least 1")
        partners = Partner.objects.order_by("partner_code")
        if options["partner"]:
            partners = partners.filter(partner_code__in=options["partner"])
            missing = set(options["partner"]) - {p.partner_code for p in partners}
            if missing:
                raise CommandError(f"unknown partner(s): {', '.join(sorted(missing))}")
        failures = []
        total = 0
        for partner in partners:
            try:
                result = conversions_purge(
                    partner=partner, batch_size=options["batch_size"], dry_run=options["dry_run"]
                )
            except (DatabaseError, PartnerDatabaseUnavailable) as exc:
                failures.append(partner.partner_code)
                self.stderr.write(f"{partner.partner_code} ({partner.database_name}): FAILED: {exc}")
                continue
            total += result.conversions
            self.stdout.write(result.describe())
        verb = "would delete" if options["dry_run"] else "deleted"
        self.stdout.write(f"purge_conversions: {verb} {total} conversion(s) in total")
        if failures:
            raise CommandError(f"could not purge: {', '.join(failures)}")
