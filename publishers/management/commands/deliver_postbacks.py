"""`python manage.py deliver_postbacks [--once]`: the outbound delivery worker (publishers/worker.py)."""

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser
from prometheus_client import start_http_server

from publishers.worker import delivery_worker_run


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
        result = delivery_worker_run(
            once=options["once"], concurrency=options["concurrency"], batch_size=options["batch_size"]
        )
        if result is not None:
            self.stdout.write(
                f"claimed {result.claimed}: delivered {result.delivered}, to retry {result.retried}, "
                f"failed {result.failed}"
            )
