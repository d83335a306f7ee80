"""`python manage.py reconcile [--partner CODE] [--days N]`: compare with the networks' reports."""

import datetime
import logging
from collections import defaultdict

from django.core.management.base import BaseCommand, CommandError

from infra.databases import PartnerDatabaseUnavailable
from partners.models import Partner
from reconciliation.models import API_KINDS, MISSING_HERE, ReconciliationRun, ReportSource
from reconciliation.services import reconciliation_run

logger = logging.getLogger("conversions.reconciliation")


class Command(BaseCommand):
    help = (
        "Reconcile the last N days (by conversion time, each partner's own days, today included) with the "
        "report of every active API report source, or only those of --partner. Logs one WARNING line per "
        "partner with conversions missing here; exits non-zero when a run failed. For cron or a Cloud Run job."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--partner", metavar="CODE", help="only this partner's API sources")
        parser.add_argument("--days", type=int, default=7, help="days to compare, ending today (default 7)")

    def handle(self, *args, **options) -> None:
        days = options["days"]
        if days < 1 or days > 366:
            raise CommandError("--days must be between 1 and 366")
        sources = ReportSource.objects.select_related("partner").filter(
            is_active=True, kind__in=API_KINDS, partner__is_active=True
        )
        code = options["partner"]
        if code:
            partner = Partner.objects.filter(partner_code=code).first()
            if partner is None:
                raise CommandError(f"there is no partner '{code}' (partner codes: manage.py shell, or the admin)")
            if not partner.is_active:
                raise CommandError(f"partner '{code}' is inactive: nothing to reconcile")
            sources = sources.filter(partner=partner)
            if not sources.exists():
                raise CommandError(
                    f"partner '{code}' has no active API report source: add one in the admin "
                    "(Reconciliation > Report sources); a CSV report is reconciled from its source's page"
                )
        if not sources.exists():
            self.stdout.write(
                "nothing to reconcile: no active partner has an active API report source "
                "(add one in the admin: Reconciliation > Report sources)"
            )
            return
        failures = []
        missing: dict[str, int] = defaultdict(int)
        for source in sources.order_by("partner__partner_code", "name"):
            partner = source.partner
            date_to = partner.local_now().date()
            date_from = date_to - datetime.timedelta(days=days - 1)
            try:
                run = reconciliation_run(
                    source=source, date_from=date_from, date_to=date_to, trigger=ReconciliationRun.BY_COMMAND
                )
            except PartnerDatabaseUnavailable as exc:
                failures.append(partner.partner_code)
                self.stderr.write(f"{partner.partner_code} {source.name}: FAILED: {exc}")
                continue
            if run.state != ReconciliationRun.DONE:
                failures.append(partner.partner_code)
                self.stderr.write(f"{partner.partner_code} {source.name}: run #{run.pk} FAILED: {run.error}")
                continue
            counts = ", ".join(f"{kind}={n}" for kind, n in run.counts.items())
            self.stdout.write(f"{partner.partner_code} {source.name} {date_from}..{date_to}: run #{run.pk}: {counts}")
            missing[partner.partner_code] += run.counts.get(MISSING_HERE, 0)
        for partner_code, count in missing.items():
            if count:
                logger.warning(
                    "reconcile partner=%s missing_here=%d: conversions in the network's report never reached us; "
                    "record them from the run in the admin",
                    partner_code,
                    count,
                )
        if failures:
            raise CommandError(f"reconciliation failed for: {', '.join(sorted(set(failures)))}")
