"""`python manage.py postback_rejections`: refused postbacks per partner, day and reason."""

from django.core.management.base import BaseCommand, CommandError

from conversions.ingest.refusals import refusal_counts
from infra.databases import PartnerDatabaseUnavailable
from partners.models import Partner


class Command(BaseCommand):
    help = "Show how many postbacks were refused (400/403/413/429) per partner, local day and reason."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--partner", action="append", metavar="CODE", help="only this partner (repeatable)")
        parser.add_argument("--days", type=int, default=7, help="how many local days back (default 7)")

    def handle(self, *args, **options) -> None:
        partners = Partner.objects.order_by("partner_code")
        if options["partner"]:
            partners = partners.filter(partner_code__in=options["partner"])
        failures = []
        for partner in partners:
            try:
                counts = refusal_counts(partner=partner, days=max(1, options["days"]))
            except PartnerDatabaseUnavailable as exc:
                failures.append(partner.partner_code)
                self.stderr.write(f"{partner.partner_code}: FAILED: {exc}")
                continue
            if not counts:
                self.stdout.write(f"{partner.partner_code}: no rejected postbacks")
                continue
            for row in counts:
                self.stdout.write(
                    f"{partner.partner_code}  {row.day.isoformat()}  {row.http_status}  "
                    f"{row.reason:<26} {row.count:>8}  last {row.last_at.isoformat(timespec='seconds')}"
                )
        if failures:
            raise CommandError(f"could not read: {', '.join(failures)}")
