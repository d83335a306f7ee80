"""`python manage.py import_legacy --from-url URL`: the previous service's history, as originals."""

from django.core.management.base import BaseCommand, CommandError

from conversions.legacy_import import LegacySourceError, legacy_import
from infra.databases import PartnerDatabaseUnavailable

# A source that cannot be read as asked (bad URL, unreachable, not the previous
# service's database) exits with this code; a write refused by our storage with 1.
SOURCE_ERROR_EXIT = 2


class Command(BaseCommand):
    help = (
        "Import the previous service's conversions (its partner_conversions and conversions tables) into each "
        "partner's storage as originals, so its conversion_ids answer `duplicate` from the first day. "
        "Read-only on the source; idempotent; publishers are not told unless --announce."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--from-url", required=True, metavar="URL", help="the previous service's database (postgres://...)"
        )
        parser.add_argument(
            "--partner",
            metavar="CODE",
            help="every row read goes to this partner of ours (required when the source has no partners table)",
        )
        parser.add_argument(
            "--source-partner",
            metavar="KEY",
            help="with --partner: only the rows the previous service filed under this partner id or code",
        )
        parser.add_argument("--dry-run", action="store_true", help="read and map everything, write nothing")
        parser.add_argument(
            "--announce",
            action="store_true",
            help="queue deliveries to matching publishers for each imported conversion, as for a new original",
        )
        parser.add_argument("--batch-size", type=int, default=1000, help="rows read per batch (default 1000)")

    def handle(self, *args, **options) -> None:
        if options["batch_size"] < 1:
            raise CommandError("--batch-size must be at least 1", returncode=SOURCE_ERROR_EXIT)
        if options["source_partner"] and not options["partner"]:
            raise CommandError("--source-partner needs --partner CODE", returncode=SOURCE_ERROR_EXIT)
        if options["dry_run"] and options["announce"]:
            raise CommandError("--dry-run writes nothing, so it announces nothing: drop one of them", returncode=2)
        try:
            report = legacy_import(
                url=options["from_url"],
                partner_code=options["partner"],
                source_partner=options["source_partner"],
                dry_run=options["dry_run"],
                announce=options["announce"],
                batch_size=options["batch_size"],
                progress=self.stderr.write,
            )
        except LegacySourceError as exc:
            raise CommandError(str(exc), returncode=SOURCE_ERROR_EXIT) from None
        except PartnerDatabaseUnavailable as exc:
            raise CommandError(f"stopped: {exc}; what was written stays, run the same command again to go on") from None
        for line in report.lines():
            self.stdout.write(line)
        if report.dry_run:
            self.stdout.write("dry run: nothing was written")
