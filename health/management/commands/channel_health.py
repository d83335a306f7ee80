"""`python manage.py channel_health [--once]`: evaluate every active partner's health (health/checker.py)."""

import signal
import threading
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from health.checker import channel_health_check, result_lines
from health.notify import notifications_send


class Command(BaseCommand):
    help = (
        "Evaluate every active partner's channel health, open and resolve incidents, and send the notifications "
        "they owe; with --once, one pass then exit 0 (incidents open or not: for cron or Cloud Scheduler), else "
        "every HEALTH_CHECK_SECONDS until SIGTERM. The background worker (deliver_postbacks) runs the same check."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--once", action="store_true", help="One pass, its notifications sent, then exit.")

    def handle(self, *args: Any, **options: Any) -> None:
        stopping = threading.Event()
        if not options["once"]:
            signal.signal(signal.SIGTERM, lambda *_: stopping.set())
            signal.signal(signal.SIGINT, lambda *_: stopping.set())
        while True:
            result = channel_health_check(force=options["once"])
            sent = notifications_send()
            for line in result_lines(result, sent):
                self.stdout.write(line)
            if options["once"] or stopping.wait(settings.HEALTH_CHECK_SECONDS):
                return
