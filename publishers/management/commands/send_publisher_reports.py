"""`python manage.py send_publisher_reports --period last-week`: each publisher's report, by email."""

import datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from publishers.models import Publisher
from publishers.reports import period_range, publisher_report, publisher_report_send


class Command(BaseCommand):
    help = "Email every active publisher with recipients its conversions and payout (CSV and XLSX attached)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--period", choices=("last-week", "last-month", "yesterday"), default="last-week")
        parser.add_argument("--start", help="First day (YYYY-MM-DD), with --end instead of --period.")
        parser.add_argument("--end", help="Last day (YYYY-MM-DD), inclusive.")
        parser.add_argument("--publisher", action="append", help="Only this publisher code (repeatable).")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["start"] or options["end"]:
            try:
                start = datetime.date.fromisoformat(options["start"] or "")
                end = datetime.date.fromisoformat(options["end"] or "")
            except ValueError as exc:
                raise CommandError(f"--start and --end must both be dates YYYY-MM-DD ({exc})") from exc
            if end < start:
                raise CommandError("--end is before --start")
        else:
            start, end = period_range(options["period"])
        publishers = Publisher.objects.filter(is_active=True)
        if options["publisher"]:
            publishers = publishers.filter(code__in=options["publisher"])
        sent = 0
        for publisher in publishers:
            if not publisher.recipients:
                self.stdout.write(f"{publisher.code}: no report recipients, skipped")
                continue
            report = publisher_report(publisher=publisher, start=start, end=end)
            sent += publisher_report_send(report=report)
            self.stdout.write(
                f"{publisher.code}: {len(report.rows)} conversion(s), payout USD {report.total_payout:f}, "
                f"sent to {', '.join(publisher.recipients)}"
            )
        self.stdout.write(f"{sent} report(s) sent for {start.isoformat()} to {end.isoformat()}")
