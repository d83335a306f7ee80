"""`python manage.py deliver_postbacks [--once]`: the outbound delivery worker."""

import logging
import signal
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser
from prometheus_client import start_http_server

from publishers.services import DeliveryWorker

logger = logging.getLogger("publishers.delivery")


class Command(BaseCommand):
    help = "Send due deliveries to publishers (claims with leases: run as many workers as needed)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--once", action="store_true", help="Send what is due now, then exit.")
        parser.add_argument("--concurrency", type=int, default=None, help="Sends in flight (DELIVERY_CONCURRENCY).")
        parser.add_argument("--batch-size", type=int, default=None, help="Deliveries claimed at a time.")
        parser.add_argument(
            "--metrics-port",
            type=int,
            default=settings.DELIVERY_METRICS_PORT,
            help="Serve this worker's Prometheus metrics on this port (0: off; DELIVERY_METRICS_PORT).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["metrics_port"]:
            # Any path answers the metrics (and a TCP startup probe finds the port open).
            start_http_server(options["metrics_port"])
        worker = DeliveryWorker(concurrency=options["concurrency"], batch_size=options["batch_size"])

        def stop(signum: int, _frame: Any) -> None:
            # The batch in flight finishes (bounded by the send timeouts) and is recorded.
            logger.info("delivery worker %s stopping (signal %s)", worker.owner, signum)
            worker.stopping.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        try:
            if options["once"]:
                result = worker.run_once()
                self.stdout.write(
                    f"claimed {result.claimed}: delivered {result.delivered}, to retry {result.retried}, "
                    f"failed {result.failed}"
                )
            else:
                logger.info(
                    "delivery worker %s started: concurrency %s, batch %s",
                    worker.owner,
                    worker.concurrency,
                    worker.batch_size,
                )
                worker.run_forever()
        finally:
            worker.close()
